package interop

// This file is the only one that knows L4Drop's API: the glue between a
// loaded rule set and an sflow.Exporter (what `l4drop run --sflow` does),
// and the test that runs real traffic through both.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
	"github.com/l4drop/l4drop/sflow"
)

// xdpAction is the number of an action as rules name it.
var xdpAction = map[string]uint32{"aborted": 0, "drop": 1, "pass": 2, "tx": 3, "redirect": 4}

// sflowCounters returns the Counters callback of a loaded rule set: the
// interface's counters from link and every rule's, the unmatched entry
// last.
func sflowCounters(h *l4drop.Handle, link *sflow.Link) func() (sflow.Counters, error) {
	return func() (sflow.Counters, error) {
		var c sflow.Counters
		ifc, err := link.Counters()
		if err != nil {
			return c, err
		}
		c.Interface = &ifc
		counts, err := h.ReadCounters()
		if err != nil {
			return c, err
		}
		rules := h.State.Meta.Rules
		for i, n := range counts {
			r := sflow.Rule{Index: uint32(i), Action: xdpAction["pass"], Packets: n.Packets, Bytes: n.Bytes}
			if i < len(rules) {
				r.Action, r.Name = xdpAction[rules[i].Action], rules[i].Name
			} else {
				r.Index = sflow.NoRule
			}
			c.Rules = append(c.Rules, r)
		}
		return c, nil
	}
}

// sflowSampler returns the Sampler callback: packets the program saw (all
// rules' counts and the unmatched one) and the samples it could not write.
func sflowSampler(h *l4drop.Handle) func() (sflow.SamplerStats, error) {
	return func() (sflow.SamplerStats, error) {
		var st sflow.SamplerStats
		counts, err := h.ReadCounters()
		if err != nil {
			return st, err
		}
		for _, n := range counts {
			st.Pool += n.Packets
		}
		_, st.Lost, err = h.SampleStats()
		return st, err
	}
}

// pumpSamples hands every sample rd reads to e until rd is closed.
func pumpSamples(rd *l4drop.SampleReader, e *sflow.Exporter) error {
	for {
		s, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if errors.Is(err, l4drop.ErrFlushed) {
			continue
		}
		if err != nil {
			return fmt.Errorf("samples: %w", err)
		}
		e.Sample(sflow.Packet{Frame: s.Data, Length: s.Len, Dropped: s.Action == "drop" || s.Action == "aborted"})
	}
}

const interopRules = `
sample_rate: 100
rules:
  - name: udp-5353
    expr: "udp dst port 5353"
`

// TestL4DropSfacctd runs real traffic through L4Drop on a veth pair:
// 50,000 datagrams to a port a rule drops and 50,000 to one it passes,
// sampled one in 100 by the XDP program, read by the sample reader and
// exported to pmacct's sfacctd and to a capture tshark reads. sfacctd's
// renormalized counts per port are within 25 % of what was sent; tshark
// reads every datagram cleanly, the discard code on dropped packets only,
// and the counter samples with L4Drop's rule record.
func TestL4DropSfacctd(t *testing.T) {
	fixture.RequireRoot(t)
	s := startSfacctd(t)
	requireTool(t, "tshark", "tshark")
	rec := newRecorder(t)

	lab, h, rd, link, agent := l4dropLab(t)
	e := newExporter(t, sflow.Config{
		Collectors: []string{s.collector(), rec.addr()}, Agent: agent, IfIndex: uint32(lab.ServerIndex),
		Counters: sflowCounters(h, link), Sampler: sflowSampler(h),
	})
	stop := runExporter(t, e)
	pumped := make(chan error, 1)
	go func() { pumped <- pumpSamples(rd, e) }()

	fixture.ListenUDP(t, lab.Server, fixture.ServerIPv4, passedPort)
	sent := map[int]uint64{}
	for port := range traffic {
		sendPaced(t, lab, port, perPort)
		sent[port] = perPort
	}
	// Every sample the program wrote reaches the exporter before it stops.
	written, lost, err := h.SampleStats()
	if err != nil {
		t.Fatal(err)
	}
	waitSamples(t, e, written)
	stop()
	rd.Close()
	if err := <-pumped; err != nil {
		t.Error(err)
	}
	counts, err := h.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("L4Drop: rule udp-5353 %d packets, unmatched %d; %d samples written, %d lost; exporter %+v",
		counts[0].Packets, counts[1].Packets, written, lost, e.Stats())
	if counts[0].Packets != perPort {
		t.Errorf("the rule dropped %d packets of %d sent", counts[0].Packets, perPort)
	}

	checkRenormalized(t, s.settled(t), sent, traffic)
	rec.waitFor(t, e.Stats().Datagrams/2)
	rec.close()
	pcap := filepath.Join(t.TempDir(), "sflow.pcap")
	n := rec.writePcap(t, pcap)
	flows := checkTshark(t, pcap, rec.port(), n)
	if st := e.Stats(); uint64(flows) != st.Samples || st.SamplesLost != 0 || st.DatagramsLost != 0 {
		t.Errorf("tshark saw %d flow samples; exporter %+v", flows, st)
	}
}

// l4dropLab loads the interop rule set on the server end of a lab veth
// pair and returns the lab, the loaded rule set, its sample reader (closed
// by the caller), the server interface's Link and its agent address.
func l4dropLab(t *testing.T) (*fixture.LabPair, *l4drop.Handle, *l4drop.SampleReader, *sflow.Link, netip.Addr) {
	t.Helper()
	rs, err := build.ParseRuleSet("interop.yaml", []byte(interopRules))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lab := fixture.Lab(t)
	loaded, err := l4drop.Load(obj, l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: fixture.BPFFS(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		loaded.Close()
		if err := l4drop.Unload(loaded.Dir); err != nil {
			t.Error(err)
		}
	})
	h, err := l4drop.Open(loaded.Dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	rd, err := h.NewSampleReader(1<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	var link *sflow.Link
	if err := lab.Server.Do(func() (err error) { link, err = sflow.OpenLink(lab.ServerIndex); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	agent, err := link.AgentAddress()
	if err != nil {
		t.Fatal(err)
	}
	return lab, h, rd, link, agent
}

// waitSamples waits up to 10 s for the exporter to have taken n samples.
func waitSamples(tb testing.TB, e *sflow.Exporter, n uint64) {
	tb.Helper()
	for range 1000 {
		if st := e.Stats(); st.Samples+st.SamplesLost >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("exporter: %+v after 10 s, want %d samples", e.Stats(), n)
}

// sendPaced sends n UDP datagrams from the lab's client to port on its
// server, pausing now and then so that the veth's queue never overflows:
// every datagram sent reaches the XDP program.
func sendPaced(tb testing.TB, lab *fixture.LabPair, port, n int) {
	tb.Helper()
	err := lab.Client.Do(func() error {
		c, err := net.Dial("udp4", net.JoinHostPort(fixture.ServerIPv4, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range n {
			if _, err := fmt.Fprintf(c, "interop datagram %d to port %d", i, port); err != nil {
				return err
			}
			if i%200 == 199 {
				time.Sleep(time.Millisecond)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}
