package interop

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var (
	reFlowSample  = regexp.MustCompile(`^\s*Flow sample, seq (\d+)`)
	reCounters    = regexp.MustCompile(`^\s*Counters sample, seq (\d+)`)
	reOutput      = regexp.MustCompile(`^\s*Output interface: (0x[0-9a-f]+)`)
	reInnerUDP    = regexp.MustCompile(`^\s*User Datagram Protocol, Src Port: \d+, Dst Port: (\d+)`)
	reFrame       = regexp.MustCompile(`^Frame \d+:`)
	reProblem     = regexp.MustCompile(`(?i)malformed|\[Expert Info \((Warning|Error)`)
	reIfCounters  = regexp.MustCompile(`^\s*Generic interface counters`)
	reEnterprise  = regexp.MustCompile(`Enterprise: Non-standard sFlow \((\d+)\)`)
	reSampleCount = regexp.MustCompile(`^\s*NumSamples: (\d+)`)
)

// tsharkSample is a flow sample as Wireshark's dissector shows it.
type tsharkSample struct {
	seq     int
	output  uint64
	dstPort int
}

// checkTshark has tshark dissect the capture of sFlow datagrams on port
// and checks that it reads all of them cleanly, that dropped packets, and
// only they, carry the discard code, and that counter samples are there.
func checkTshark(t *testing.T, pcap string, port, datagrams int) (flowSamples int) {
	t.Helper()
	out := tshark(t, "-r", pcap, "-d", fmt.Sprintf("udp.port==%d,sflow", port), "-V")
	var (
		frames, counters, ifCounters, enterprise, announced int
		flows                                               []tsharkSample
		cur                                                 *tsharkSample // in this frame
	)
	for line := range strings.Lines(out) {
		if reProblem.MatchString(line) {
			t.Errorf("tshark: %s", strings.TrimSpace(line))
		}
		switch {
		case reFrame.MatchString(line):
			frames++
			cur = nil
		case reSampleCount.MatchString(line):
			n, _ := strconv.Atoi(reSampleCount.FindStringSubmatch(line)[1])
			announced += n
		case reFlowSample.MatchString(line):
			n, _ := strconv.Atoi(reFlowSample.FindStringSubmatch(line)[1])
			flows = append(flows, tsharkSample{seq: n, dstPort: -1})
			cur = &flows[len(flows)-1]
		case reIfCounters.MatchString(line):
			ifCounters++
		case reEnterprise.MatchString(line):
			enterprise++
		case reCounters.MatchString(line):
			counters++
			cur = nil
		case reOutput.MatchString(line) && cur != nil:
			cur.output, _ = strconv.ParseUint(reOutput.FindStringSubmatch(line)[1], 0, 32)
		case reInnerUDP.MatchString(line) && cur != nil && cur.dstPort < 0:
			cur.dstPort, _ = strconv.Atoi(reInnerUDP.FindStringSubmatch(line)[1])
		}
	}
	t.Logf("tshark: %d datagrams, %d flow samples, %d counter samples (%d with if_counters, %d enterprise records)",
		frames, len(flows), counters, ifCounters, enterprise)
	if frames != datagrams || datagrams == 0 {
		t.Errorf("tshark read %d datagrams of %d", frames, datagrams)
	}
	if announced != len(flows)+counters {
		t.Errorf("datagrams announce %d samples, tshark dissected %d", announced, len(flows)+counters)
	}
	if counters == 0 || ifCounters == 0 || enterprise == 0 {
		t.Errorf("%d counter samples, %d if_counters, %d enterprise records: want some of each", counters, ifCounters, enterprise)
	}
	perPort := map[int]int{}
	for i, f := range flows {
		if f.seq != i+1 {
			t.Errorf("flow sample %d has sequence number %d", i, f.seq)
		}
		perPort[f.dstPort]++
		// Packets of the kernel's own (IPv6 neighbour discovery and the
		// like, port -1) pass too.
		want := uint64(0)
		if traffic[f.dstPort] {
			want = 0x40000102
		}
		if f.output != want {
			t.Errorf("flow sample %d: packet to port %d, output interface %#x, want %#x", f.seq, f.dstPort, f.output, want)
		}
	}
	t.Logf("tshark: flow samples per destination port %v", perPort)
	return len(flows)
}
