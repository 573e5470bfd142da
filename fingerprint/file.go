package fingerprint

import (
	"fmt"
	"strings"

	"github.com/l4drop/l4drop/l4drop"
)

// FromFrames returns the IP packets of Ethernet frames (up to two VLAN
// tags), as l4drop.ReadFrames returns a capture's; frames without one are
// left out.
func FromFrames(frames [][]byte) []Packet {
	out := make([]Packet, 0, len(frames))
	for _, f := range frames {
		if off, ok := l4drop.IPOffset(f); ok {
			out = append(out, Packet{Data: f[off:]})
		}
	}
	return out
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
