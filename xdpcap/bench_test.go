package xdpcap

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
)

// BenchmarkHook measures, in ns per packet (BPF_PROG_TEST_RUN, the
// program kept attached), what a hook costs an XDP program: the same
// program without the hook, with an empty hook, with a filter that matches
// nothing, and with a filter that captures every packet into the ring
// buffer (a reader drains it meanwhile).
func BenchmarkHook(b *testing.B) {
	fixture.RequireRoot(b)
	runner := fixture.NewXDPRunner(b)
	// A 64-byte UDP datagram the program passes.
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 5000, make([]byte, 18))

	noMatch, err := cbpf.Compile("udp port 53 and host 192.0.2.1", cbpf.LinkTypeEthernet, 0)
	if err != nil {
		b.Fatal(err)
	}

	for _, bc := range []struct {
		name    string
		hooked  bool
		capture bool
		match   bool
	}{
		{name: "no-hook"},
		{name: "empty-hook", hooked: true},
		{name: "filter-no-match", hooked: true, capture: true},
		{name: "capture-all", hooked: true, capture: true, match: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			hook, err := NewHook()
			if err != nil {
				b.Fatal(err)
			}
			defer hook.Close()
			prog := goProgramHooked(b, hook, bc.hooked)
			if bc.capture {
				opts := Options{Filter: noMatch, Actions: []Action{Pass}, SnapLen: 128}
				if bc.match {
					opts.Filter = nil
				}
				c, err := Start([]*ebpf.Map{hook}, opts)
				if err != nil {
					b.Fatal(err)
				}
				done := make(chan struct{})
				go func() {
					defer close(done)
					for {
						if _, err := c.Read(); errors.Is(err, ErrClosed) {
							return
						}
					}
				}()
				defer func() {
					c.Close()
					<-done
					if bc.match {
						s, _ := c.Stats()
						t := s.Total()
						b.ReportMetric(float64(t.Lost)/float64(max(t.Matched, 1)), "lost/matched")
					}
				}()
			}
			ns, err := runner.Repeat(prog, pkt, uint32(max(b.N, 1000)))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(ns, "ns/pkt")
		})
	}
}
