package xdpcap

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket/layers"

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

// BenchmarkTestFilter measures offline filtering (xdpcap -r): one
// BPF_PROG_TEST_RUN and, on a match, one ring buffer read per packet.
func BenchmarkTestFilter(b *testing.B) {
	fixture.RequireRoot(b)
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 53, make([]byte, 18))
	for _, bc := range []struct{ name, expr string }{
		{"match", "udp port 53"},
		{"no-match", "tcp port 80"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			filter, err := cbpf.Compile(bc.expr, cbpf.LinkTypeEthernet, 0)
			if err != nil {
				b.Fatal(err)
			}
			tf, err := NewTestFilter(filter, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer tf.Close()
			for b.Loop() {
				if _, _, err := tf.Match(pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHookOverhead measures the same three programs as BenchmarkHook
// (no hook, empty hook, filter that matches nothing) and a fourth, the
// empty hook's program starting with Enter (an empty entry slot), side by
// side: each stays attached in a namespace of its own, and rounds of test
// runs alternate between them, so that the machine's drift hits all alike.
// It reports the mean ns per packet of each and the extra costs: of the
// hook, and of the entry slot over the hook.
func BenchmarkHookOverhead(b *testing.B) {
	fixture.RequireRoot(b)
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 5000, make([]byte, 18))
	noMatch, err := cbpf.Compile("udp port 53 and host 192.0.2.1", cbpf.LinkTypeEthernet, 0)
	if err != nil {
		b.Fatal(err)
	}
	type variant struct {
		name   string
		runner *fixture.XDPRunner
		prog   *ebpf.Program
		total  float64
	}
	var vs []*variant
	for _, name := range []string{"no-hook", "empty-hook", "no-match", "empty-entry"} {
		hook, err := NewHook()
		if err != nil {
			b.Fatal(err)
		}
		defer hook.Close()
		v := &variant{name: name, runner: fixture.NewXDPRunner(b)}
		if name == "empty-entry" {
			enter, err := Enter(asm.R6, "hook")
			if err != nil {
				b.Fatal(err)
			}
			v.prog = loadGoProgram(b, "test_go_entry", append(enter, goProgramInsns(true)...), hook, 0)
		} else {
			v.prog = goProgramHooked(b, hook, name != "no-hook")
		}
		if name == "no-match" {
			c, err := Start([]*ebpf.Map{hook}, Options{Filter: noMatch, Actions: []Action{Pass}})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
		}
		vs = append(vs, v)
	}
	const rounds = 20
	per := uint32(max(b.N/rounds, 10000))
	for range rounds {
		for _, v := range vs {
			ns, err := v.runner.Repeat(v.prog, pkt, per)
			if err != nil {
				b.Fatal(err)
			}
			v.total += ns
		}
	}
	for _, v := range vs {
		b.ReportMetric(v.total/rounds, v.name+"-ns/pkt")
	}
	b.ReportMetric((vs[1].total-vs[0].total)/rounds, "empty-hook-extra-ns/pkt")
	b.ReportMetric((vs[2].total-vs[0].total)/rounds, "no-match-extra-ns/pkt")
	b.ReportMetric((vs[3].total-vs[1].total)/rounds, "empty-entry-extra-ns/pkt")
}

// BenchmarkInterpreter measures xdpcap's interpreter of a filter's eBPF
// code alone (what xdpcap -r spends a packet on the filter) over the
// corpus's Ethernet frames, in ns per packet.
func BenchmarkInterpreter(b *testing.B) {
	var frames [][]byte
	for _, c := range fixture.CorpusCaptures(b) {
		if c.LinkType != layers.LinkTypeEthernet {
			continue
		}
		for _, p := range c.Packets {
			// Packets that fit a test run's first buffer.
			if len(p.Data) >= MinPacketLen && len(p.Data) <= 3000 {
				frames = append(frames, p.Data)
			}
		}
	}
	if len(frames) == 0 {
		b.Skip("no Ethernet frames in the corpus")
	}
	for _, expr := range []string{"udp", "tcp[tcpflags] & tcp-syn != 0", "ip6 and not icmp6", "host 192.168.1.1 or port 53"} {
		b.Run(expr, func(b *testing.B) {
			filter, err := cbpf.Compile(expr, cbpf.LinkTypeEthernet, 0)
			if err != nil {
				b.Fatal(err)
			}
			it, err := newInterpreter(filter)
			if err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				if _, err := it.match(frames[i%len(frames)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
