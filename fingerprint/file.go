package fingerprint

import (
	"fmt"
	"strings"

	"github.com/l4drop/l4drop/l4drop"
)

// FromFrames returns the IP packets of Ethernet frames, as FromFrame
// does, as l4drop.ReadFrames returns a capture's; frames without one are
// left out.
func FromFrames(frames [][]byte) []Packet {
	out := make([]Packet, 0, len(frames))
	for _, f := range frames {
		if p, ok := FromFrame(f); ok {
			out = append(out, p)
		}
	}
	return out
}

// FromFrame returns the IP packet of an Ethernet frame (after up to two
// VLAN tags), its family the ethertype's, as the program takes it; false
// if the frame carries neither IPv4 nor IPv6.
func FromFrame(frame []byte) (Packet, bool) {
	off, ok := l4drop.IPOffset(frame)
	if !ok {
		return Packet{}, false
	}
	p := Packet{Data: frame[off:], Family: 4}
	if frame[off-2] == 0x86 && frame[off-1] == 0xdd {
		p.Family = 6
	}
	return p, true
}

// RulesFile renders rules as an L4Drop rules file: a drop rule each, named
// prefix-1, prefix-2..., whose matcher is the rule's pcap-filter
// expression over the IP packet, commented with what it was made from.
func RulesFile(rules []Rule, prefix string, attack, baseline int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# l4drop fingerprint: %d rule(s) from %d attack and %d baseline packets.\n", len(rules), attack, baseline)
	b.WriteString("# Each matches none of the baseline. Try it first: l4drop test THIS.yaml -r CAPTURE --json\n")
	b.WriteString("rules:\n")
	for i, r := range rules {
		fmt.Fprintf(&b, "  # %s; matches %d of the %d packets of its vector (%.2f%%)\n", strings.Join(r.Fields, ", "), r.Matched, r.Samples, 100*r.Coverage)
		fmt.Fprintf(&b, "  - name: %s-%d\n", prefix, i+1)
		// Go's quoting of an ASCII string is a YAML double-quoted scalar.
		fmt.Fprintf(&b, "    expr: %q\n", r.Expr())
		b.WriteString("    action: drop\n")
	}
	return []byte(b.String())
}
