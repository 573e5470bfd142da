package main

import (
	"bytes"
	"encoding/json"
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
	var stdout, stderr bytes.Buffer
	if err := run([]string{"-h"}, &stdout, &stderr); err == nil {
		t.Fatal("-h: no error")
	}
	if !strings.Contains(stderr.String(), "Examples:") || !strings.Contains(stderr.String(), "cbpfc -emit stats") {
		t.Errorf("help lacks examples:\n%s", stderr.String())
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
