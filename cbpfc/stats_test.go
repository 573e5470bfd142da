package cbpfc

import (
	"testing"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
)

func TestVerifierStats(t *testing.T) {
	fixture.RequireRoot(t)
	for _, tc := range []struct {
		name   string
		filter []bpf.Instruction
	}{
		{"accept all", []bpf.Instruction{bpf.RetConstant{Val: 65535}}},
		{"tcp port 80", compileForStats(t, "tcp port 80")},
		{"ip6 and udp", compileForStats(t, "ip6 and udp dst port 53")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := VerifierStats(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			insns, err := XDPProgram(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if s.CBPF != len(tc.filter) || s.EBPF != int(insns.Size()/8) {
				t.Errorf("cbpf %d, ebpf %d; want %d, %d", s.CBPF, s.EBPF, len(tc.filter), insns.Size()/8)
			}
			// Branches the verifier prunes are processed not at all, and a
			// program without loops is processed at most once per path.
			if s.Processed < 2 || s.Processed > 64*s.EBPF {
				t.Errorf("implausible processed count %d for %d instructions", s.Processed, s.EBPF)
			}
		})
	}
	if _, err := VerifierStats([]bpf.Instruction{bpf.Jump{Skip: 5}}); err == nil {
		t.Error("a filter jumping out of itself gave no error")
	}
}

func compileForStats(t *testing.T, expr string) []bpf.Instruction {
	t.Helper()
	prog, err := cbpf.Compile(expr, cbpf.LinkTypeEthernet, cbpf.DefaultSnaplen)
	if err != nil {
		t.Fatal(err)
	}
	return prog
}
