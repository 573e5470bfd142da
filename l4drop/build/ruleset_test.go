package build

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRuleSet(t *testing.T) {
	rs, err := ParseRuleSet("r.yaml", []byte(`
sample_rate: 100
rules:
  - name: a
    expr: "udp"
    locations: [ams]
  - name: b
    family: ipv6
    bpf: "1,6 0 0 65535"
    action: pass
`))
	if err != nil {
		t.Fatal(err)
	}
	if rs.SampleRate != 100 || len(rs.Rules) != 2 {
		t.Fatalf("parsed %+v", rs)
	}
	if a := rs.Rules[0]; a.Line != 4 || a.Action != ActionDrop || !a.EnabledAt("ams") || a.EnabledAt("sjc") || a.EnabledAt("") {
		t.Errorf("rule a: %+v", a)
	}
	if b := rs.Rules[1]; b.Line != 7 || b.Action != ActionPass || b.Family != FamilyIPv6 || !b.EnabledAt("sjc") {
		t.Errorf("rule b: %+v", b)
	}
}

func TestParseRuleSetErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"broken yaml", "rules: [\n  - name: x\n", []string{"bad.yaml:1:"}},
		{"unknown top field", "sample_rat: 3\nrules:\n  - name: x\n    expr: udp\n", []string{"bad.yaml:1:", "sample_rat"}},
		{"unknown rule field", "rules:\n  - name: x\n    exrp: udp\n", []string{"bad.yaml:3:", "exrp"}},
		{"no rules", "sample_rate: 1\n", []string{"no rules"}},
		{"empty", "", []string{"empty"}},
		{"no name", "rules:\n  - expr: udp\n", []string{"bad.yaml:2", "missing name"}},
		{"duplicate", "rules:\n  - name: x\n    expr: udp\n  - name: x\n    expr: tcp\n", []string{"bad.yaml:4", `"x"`, "line 2"}},
		{"bad family", "rules:\n  - name: x\n    family: ipv5\n    expr: udp\n", []string{"bad.yaml:2", `"x"`, "ipv5"}},
		{"bad action", "rules:\n  - name: x\n    action: reject\n    expr: udp\n", []string{"bad.yaml:2:", `"x"`, "reject", "monitor"}},
		{"second document", "rules:\n  - name: x\n    expr: udp\n---\nrules:\n  - name: y\n    expr: tcp\n", []string{"bad.yaml:4:", "second YAML document"}},
		{"huge snaplen", "snaplen: 10000000\nrules:\n  - name: x\n    expr: udp\n", []string{"bad.yaml:1:", "snaplen 10000000", "65535"}},
		{"bad fragments", "fragments: reject\nrules:\n  - name: x\n    expr: udp\n", []string{"bad.yaml:1:", "fragments"}},
		{"fragments ratelimit without rate", "fragments: ratelimit\nrules:\n  - name: x\n    expr: udp\n", []string{"bad.yaml:1:", "fragments_rate"}},
		{"fragments_rate without ratelimit", "fragments: drop\nfragments_rate: 5\nrules:\n  - name: x\n    expr: udp\n", []string{"bad.yaml:2:", "fragments: ratelimit"}},
		{"bad expires", "rules:\n  - name: x\n    expr: udp\n    expires: soon\n", []string{"bad.yaml:2:", "expires"}},
		{"bad until", "rules:\n  - name: x\n    expr: udp\n    until: tomorrow\n", []string{"bad.yaml:2:", "RFC 3339"}},
		{"no matcher", "rules:\n  - name: x\n", []string{`"x"`, "no matcher"}},
		{"bad rate", "sample_rate: -1\nrules:\n  - name: x\n    expr: udp\n", []string{"bad.yaml:1:"}},
		{"ratelimit without rate", "rules:\n  - name: x\n    action: ratelimit\n    expr: udp\n", []string{"bad.yaml:2:", `"x"`, "rate 0"}},
		{"ratelimit bad per", "rules:\n  - name: x\n    action: ratelimit\n    rate: 10\n    per: destination\n    expr: udp\n", []string{"bad.yaml:2:", "destination", "source/24"}},
		{"rate on drop", "rules:\n  - name: x\n    rate: 10\n    expr: udp\n", []string{"bad.yaml:2:", "action ratelimit"}},
		{"max_sources per rule", "rules:\n  - name: x\n    action: ratelimit\n    rate: 10\n    max_sources: 100\n    expr: udp\n", []string{"bad.yaml:2:", "max_sources"}},
		{"huge max_sources", "rules:\n  - name: x\n    action: ratelimit\n    rate: 10\n    per: source\n    max_sources: 100000000\n    expr: udp\n", []string{"bad.yaml:2:", "max_sources 100000000"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRuleSet("bad.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrRuleSet) {
				t.Errorf("error %v does not wrap ErrRuleSet", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestGenerateErrors: matchers that do not compile name file, line and rule.
func TestGenerateErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"bad expr", "rules:\n  - name: ok\n    expr: udp\n  - name: x\n    expr: \"tcp port fish\"\n", []string{"bad.yaml:4", `"x"`, "expr"}},
		{"bad bytecode", "rules:\n  - name: x\n    bpf: \"2,6 0 0\"\n", []string{"bad.yaml:2", `"x"`, "bpf"}},
		{"bytecode count", "rules:\n  - name: x\n    bpf: \"2,6 0 0 0\"\n", []string{"bad.yaml:2", `"x"`, "bpf"}},
		{"bad jump", "rules:\n  - name: x\n    bpf: \"2,21 5 0 1,6 0 0 0\"\n", []string{"bad.yaml:2", `"x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := ParseRuleSet("bad.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Generate(rs, BuildOptions{})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCString(t *testing.T) {
	got := cString([]byte("a\"b\\c\n\xff?1"))
	want := `"a\"b\\c\012\377\0771"`
	if got != want {
		t.Errorf("cString = %s, want %s", got, want)
	}
}
