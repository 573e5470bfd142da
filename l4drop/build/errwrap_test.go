package build

import (
	"errors"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/cbpf"
)

// TestRuleErrorsWrap checks that a rule's error keeps the matcher's error
// in its chain (errors.Is), and quotes a huge expression only so far.
func TestRuleErrorsWrap(t *testing.T) {
	huge := "host " + strings.Repeat("a", 1<<20) + " and"
	for _, tt := range []struct {
		name, yaml string
		want       error
		text       string
	}{
		{"expr", "rules:\n  - name: x\n    expr: \"tcp port fish\"\n", cbpf.ErrCompile, `expr: compile "tcp port fish"`},
		{"bpf", "rules:\n  - name: x\n    bpf: \"2,6 0 0\"\n", cbpf.ErrSyntax, "bpf: "},
		{"huge expr", "rules:\n  - name: x\n    expr: \"" + huge + "\"\n", cbpf.ErrCompile, "(1048585 bytes)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := ParseRuleSet("r.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Generate(rs, BuildOptions{})
			if !errors.Is(err, tt.want) || !errors.Is(err, ErrRuleSet) {
				t.Fatalf("error %.300v: want it to wrap %v and ErrRuleSet", err, tt.want)
			}
			if msg := err.Error(); !strings.Contains(msg, tt.text) || len(msg) > 500 {
				t.Errorf("error of %d bytes %.500q, want a short one with %q", len(msg), msg, tt.text)
			}
		})
	}
}
