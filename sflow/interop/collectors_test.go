package interop

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/l4drop/l4drop/sflow"
)

var traffic = map[int]bool{droppedPort: true, passedPort: false}

// TestSfacctdSynthetic: pmacct's sfacctd, renormalizing, counts the
// packets behind 1-in-100 samples of 50,000 packets per port within 25 %,
// and sees the discard code only on the dropped port's.
func TestSfacctdSynthetic(t *testing.T) {
	s := startSfacctd(t)
	e := newExporter(t, sflow.Config{Collectors: []string{s.collector()}})
	stop := runExporter(t, e)
	sent := feedSynthetic(t, e, traffic, nil)
	stop()
	checkRenormalized(t, s.settled(t), sent, traffic)
	if st := e.Stats(); st.SamplesLost != 0 || st.DatagramsLost != 0 {
		t.Errorf("exporter stats %+v", st)
	}
}

// TestTsharkSynthetic: Wireshark's dissector reads every datagram without
// a malformed-packet or warning, finds the discard code on dropped
// packets only, and sees counter samples.
func TestTsharkSynthetic(t *testing.T) {
	requireTool(t, "tshark", "tshark")
	rec := newRecorder(t)
	e := newExporter(t, sflow.Config{Collectors: []string{rec.addr()}, Counters: fakeCounters})
	stop := runExporter(t, e)
	sent := feedSynthetic(t, e, traffic, nil)
	stop()
	rec.waitFor(t, e.Stats().Datagrams)
	rec.close()
	pcap := filepath.Join(t.TempDir(), "sflow.pcap")
	n := rec.writePcap(t, pcap)
	flows := checkTshark(t, pcap, rec.port(), n)
	if st := e.Stats(); flows != int(st.Samples) || st.SamplesLost != 0 {
		t.Errorf("tshark saw %d flow samples, the exporter sent %d (%d lost) for %v packets", flows, st.Samples, st.SamplesLost, sent)
	}
}

func fakeCounters() (sflow.Counters, error) {
	return sflow.Counters{
		Interface: &sflow.IfCounters{Index: 2, Type: 6, Speed: 10e9, Direction: 1, Status: 3, InOctets: 1e9, InUcast: 1e6},
		Rules: []sflow.Rule{
			{Index: 0, Action: 1, Packets: perPort, Bytes: perPort * 60, Name: "udp-5353"},
			{Index: sflow.NoRule, Action: 2, Packets: perPort, Bytes: perPort * 60},
		},
	}, nil
}

func tshark(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("tshark", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("tshark %v: %v\n%s", args, err, out)
	}
	return string(out)
}
