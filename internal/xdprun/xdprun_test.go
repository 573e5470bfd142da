package xdprun_test

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/xdprun"
)

func TestRunner(t *testing.T) {
	fixture.RequireRoot(t)
	r, err := xdprun.New("l4dt-xdprun")
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
