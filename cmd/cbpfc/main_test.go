package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    string // in stdout
		wantErr string // in the error
	}{
		{"listing", []string{"ip"}, "(001) jeq      #0x800", ""},
		{"ebpf", []string{"-emit", "ebpf", "udp port 53"}, "LdXMemH", ""},
		{"c", []string{"-emit", "c", "-function", "dns", "-linktype", "RAW", "udp port 53"}, "static __always_inline uint32_t dns(", ""},
		{"xdp-c", []string{"-emit", "xdp-c", "ip"}, `section("xdp")`, ""},
		{"bytecode", []string{"-emit", "c", "4,40 0 0 12,21 0 1 2048,6 0 0 262144,6 0 0 0"}, "return 0x40000;", ""},
		{"bad expression", []string{"tcp prt 80"}, "", "syntax error"},
		{"unsupported extension", []string{"-emit", "ebpf", "4,32 0 0 4294963200,21 0 1 44,6 0 0 1,6 0 0 0"}, "", "instruction 0: unsupported: extension proto"},
		{"jump past the end", []string{"-emit", "c", "2,21 0 5 1,6 0 0 0"}, "", "instruction 0: invalid instruction: jump if false to 6, past the end"},
		{"bad emit", []string{"-emit", "asm", "ip"}, "", "-emit"},
		{"nothing", nil, "", "no expression"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(tt.args, &stdout, &stderr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(stdout.String(), tt.want) {
				t.Errorf("output lacks %q:\n%s", tt.want, stdout.String())
			}
		})
	}
}

func TestHelp(t *testing.T) {
	bin := filepath.Join(fixture.BuildCommands(t, "./cmd/cbpfc"), "cbpfc")
	for _, flag := range []string{"-h", "-help", "--help"} {
		t.Run(flag, func(t *testing.T) {
			r := fixture.RunCommand(t, bin, flag)
			if r.Code != 0 || r.Stderr != "" {
				t.Errorf("exit status %d, stderr %q; want 0 and nothing", r.Code, r.Stderr)
			}
			for _, want := range []string{"Examples:", "cbpfc -emit stats", "-snaplen"} {
				if !strings.Contains(r.Stdout, want) {
					t.Errorf("help on stdout lacks %q:\n%s", want, r.Stdout)
				}
			}
		})
	}
}

// TestBadInput runs the command on bad flags and input: each must end
// with status 1 and a message naming what is wrong, never a panic.
func TestBadInput(t *testing.T) {
	bin := filepath.Join(fixture.BuildCommands(t, "./cmd/cbpfc"), "cbpfc")
	// 1 MB of input, in arguments of 100 kB: the kernel takes no longer one.
	huge := func(first, s string) []string {
		args := []string{first}
		for range 10 {
			args = append(args, strings.Repeat(s, 100000/len(s)))
		}
		return args
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-x", "ip"}, "-x"},
		{"flag without value", []string{"ip", "-emit"}, "syntax error"},
		{"missing value", []string{"-emit"}, "-emit"},
		{"bad emit", []string{"-emit", "asm", "ip"}, `-emit "asm": want cbpf`},
		{"bad link type", []string{"-linktype", "FOO", "ip"}, `-linktype: link type "FOO"`},
		{"zero snaplen", []string{"-snaplen", "0", "ip"}, "-snaplen 0: want 1 to 262144"},
		{"negative snaplen", []string{"-snaplen", "-5", "ip"}, "-snaplen -5"},
		{"huge snaplen", []string{"-snaplen", "99999999999", "ip"}, "-snaplen 99999999999"},
		{"bad snaplen", []string{"-snaplen", "x", "ip"}, "-snaplen"},
		{"bad function", []string{"-emit", "c", "-function", "a-b", "ip"}, `function name "a-b" is not a C identifier`},
		{"nothing", nil, "no expression or bytecode given"},
		{"bad expression", []string{"tcp prt 80"}, `compile "tcp prt 80"`},
		{"bad bytecode", []string{"2,6 0 0 1,6 0 0"}, "bytecode"},
		{"huge expression", huge("host", "a"), `compile "host aaaa`},
		{"huge bytecode", huge("1,6 0 0", "1 "), `instruction 0: bad cBPF bytecode: want "op jt jf k", got "6 0 0 1 1`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := fixture.RunCommand(t, bin, tt.args...)
			r.WantError(t, tt.want)
			if !strings.HasPrefix(r.Stderr, "cbpfc: ") && tt.args != nil {
				t.Errorf("stderr %q does not start with cbpfc: ", fixture.Shorten(r.Stderr))
			}
		})
	}
}

func TestStats(t *testing.T) {
	fixture.RequireRoot(t)
	var stdout, stderr bytes.Buffer
	if err := run([]string{"-emit", "stats", "tcp port 80"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	var s statsLine
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatalf("%v: %q", err, stdout.String())
	}
	if s.CBPF < 10 || s.EBPF <= 0 || s.Processed < s.EBPF/2 {
		t.Errorf("implausible stats %+v", s)
	}
}
