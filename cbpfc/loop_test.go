package cbpfc

import (
	"testing"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestLoopsMayGoto checks which loops get a may_goto on their back edge
// (those whose values repeat from one iteration to the next, so that the
// verifier can stop at it), that every one loads, and that each gives the
// interpreter's results.
func TestLoopsMayGoto(t *testing.T) {
	fixture.RequireRoot(t)
	r := fixture.NewXDPRunner(t)
	cases := []struct {
		name    string
		filter  []bpf.Instruction
		mayGoto bool
	}{
		// libpcap's protochain: A and X come from the packet each time
		// round (X through the stack where two back edges meet).
		{"protochain", raw(t, "24,40 0 0 12,21 0 21 2048,48 0 0 23,177 0 0 14,21 15 0 6,21 14 0 59,4 0 0 0,21 0 12 51,135 0 0 0,80 0 0 14,2 0 0 0,135 0 0 0,4 0 0 1,7 0 0 0,80 0 0 14,4 0 0 2,36 0 0 4,7 0 0 0,96 0 0 0,5 0 0 4294967280,4 0 0 0,21 0 1 6,6 0 0 262144,6 0 0 0"), true},
		// A grows by 48 each time round: the verifier would see a new
		// constant at every may_goto and never stop.
		{"A grows", []bpf.Instruction{
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 48},
			bpf.JumpIfX{Cond: bpf.JumpEqual, SkipTrue: 1},
			bpf.RawInstruction{Op: 0x05, K: 0xfffffffd},
			bpf.RetA{},
		}, false},
		// X grows, one back edge: X is not widened.
		{"X grows", []bpf.Instruction{
			bpf.TXA{},
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 4},
			bpf.TAX{},
			bpf.LoadIndirect{Off: 14, Size: 1},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x11, SkipTrue: 1},
			bpf.RawInstruction{Op: 0x05, K: 0xfffffffa},
			bpf.TXA{},
			bpf.RetA{},
		}, false},
		// A counter in M[0], read at the loop head.
		{"M counter", []bpf.Instruction{
			bpf.LoadScratch{Dst: bpf.RegA, N: 0},
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1},
			bpf.StoreScratch{Src: bpf.RegA, N: 0},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 5, SkipTrue: 1},
			bpf.RawInstruction{Op: 0x05, K: 0xfffffffb},
			bpf.RetA{},
		}, false},
		// The head reads only what the body reloads from the packet.
		{"reload", []bpf.Instruction{
			bpf.LoadAbsolute{Off: 14, Size: 1},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x45, SkipTrue: 2},
			bpf.LoadAbsolute{Off: 15, Size: 1},
			bpf.RawInstruction{Op: 0x05, K: 0xfffffffd},
			bpf.RetA{},
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			insns, err := ToEBPF(c.filter, testOpts)
			if err != nil {
				t.Fatal(err)
			}
			got := false
			for _, ins := range insns {
				got = got || ins.OpCode.JumpOp() == asm.JCOND
			}
			if got != c.mayGoto {
				t.Errorf("may_goto %v, want %v:\n%v", got, c.mayGoto, insns)
			}
			prog, err := loadEBPF(t, c.filter)
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			for j, pkt := range testPackets() {
				want := interpret(c.filter, pkt, extValues{})
				v, err := runValue(r, prog, pkt)
				if err != nil {
					t.Fatal(err)
				}
				if v != want {
					t.Errorf("packet %d (%d bytes): got %#x, want %#x", j, len(pkt), v, want)
				}
			}
		})
	}
}
