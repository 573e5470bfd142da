package xdprun_test

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/xdprun"
)

func TestRunner(t *testing.T) {
	fixture.RequireRoot(t)
	r, err := xdprun.New()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a, b := fixture.ReturnProgram(t, 1), fixture.ReturnProgram(t, 2)
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, nil)
	// Alternating programs: each run must run the program it names.
	for i := range 4 {
		prog, want := a, uint32(1)
		if i%2 == 1 {
			prog, want = b, 2
		}
		got, err := r.Run(prog, &ebpf.RunOptions{Data: pkt})
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("run %d: got %d, want %d", i, got, want)
		}
	}
	// Programs loaded from ELF (SEC("xdp")) carry an expected attach type,
	// and a program array takes only programs like its first.
	elf, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer elf.Close()
	for i, tt := range []struct {
		prog *ebpf.Program
		want uint32
	}{{a, 1}, {elf, 3}, {a, 1}, {elf, 3}} {
		if got, err := r.Run(tt.prog, &ebpf.RunOptions{Data: pkt}); err != nil || got != tt.want {
			t.Errorf("mixed run %d: %d, %v; want %d", i, got, err, tt.want)
		}
	}
	// Repeated runs go through an attachment, single runs do not: mixed,
	// each must still run the program it names.
	for i, tt := range []struct {
		prog   *ebpf.Program
		repeat uint32
		want   uint32
	}{{a, 3, 1}, {b, 1, 2}, {elf, 5, 3}, {a, 1, 1}, {b, 2, 2}, {elf, 0, 3}} {
		if got, err := r.Run(tt.prog, &ebpf.RunOptions{Data: pkt, Repeat: tt.repeat}); err != nil || got != tt.want {
			t.Errorf("run %d (repeat %d): %d, %v; want %d", i, tt.repeat, got, err, tt.want)
		}
	}
	for _, n := range []int{xdprun.MinPacketLen - 1, 1 << 20} {
		if _, err := r.Run(a, &ebpf.RunOptions{Data: make([]byte, n)}); !errors.Is(err, xdprun.ErrPacketSize) {
			t.Errorf("%d-byte packet: %v, want ErrPacketSize", n, err)
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
