package xdprun_test

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/xdprun"
)

// firstByte returns an XDP program that returns the packet's first byte.
func firstByte(t *testing.T) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 1),
			asm.Mov.Imm(asm.R0, 0),
			asm.JGT.Reg(asm.R4, asm.R3, "out"),
			asm.LoadMem(asm.R0, asm.R2, 0, asm.Byte),
			asm.Return().WithSymbol("out"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

func TestRunner(t *testing.T) {
	fixture.RequireRoot(t)
	r, err := xdprun.New("l4dt-xdprun")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a, b := firstByte(t), firstByte(t)
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, nil)
	// Alternating programs: each run must run the program it names.
	for i, first := range []byte{0, 2, 3, 0x42} {
		pkt[0] = first
		prog := a
		if i%2 == 1 {
			prog = b
		}
		got, err := r.Run(prog, &ebpf.RunOptions{Data: pkt})
		if err != nil {
			t.Fatal(err)
		}
		if got != uint32(first) {
			t.Errorf("run %d: got %d, want %d", i, got, first)
		}
	}
	if d, err := r.Benchmark(a, pkt, 1000); err != nil || d <= 0 {
		t.Errorf("Benchmark = %v, %v; want a positive duration", d, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(a, &ebpf.RunOptions{Data: pkt}); err == nil {
		t.Error("Run after Close succeeded")
	}
}
