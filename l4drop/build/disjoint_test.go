package build

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/bpfgen"
	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
)

func TestMatchTestsDisjoint(t *testing.T) {
	dnsProg := func(name string) []bpf.Instruction {
		t.Helper()
		p, err := bpfgen.Generate(bpfgen.Options{}, "dns", []string{name})
		if err != nil {
			t.Fatal(err)
		}
		return p.Insns
	}
	exprProg := func(expr string) []bpf.Instruction {
		t.Helper()
		p, err := cbpf.Compile(expr, cbpf.LinkTypeRaw, 0)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		name string
		a, b []bpf.Instruction
		want bool
	}{
		{"names of two lengths", dnsProg("host1.example"), dnsProg("host10.example"), true},
		{"one name twice", dnsProg("host1.example"), dnsProg("host1.example"), false},
		{"udp and tcp", exprProg("udp dst port 53"), exprProg("tcp dst port 53"), true},
		{"two ports", exprProg("udp dst port 53"), exprProg("udp dst port 54"), true},
		{"a port and a TTL", exprProg("udp dst port 53"), exprProg("ip[8] = 64"), false},
		{"a port and its range", exprProg("udp dst port 53"), exprProg("udp dst portrange 50-60"), false},
		{"either port", exprProg("udp port 53"), exprProg("udp dst port 54"), false},
		// Disjoint, but a test that fails on the way to a match is not
		// followed: the analysis may miss disjoint pairs, never overlaps.
		{"negation", exprProg("not udp dst port 53"), exprProg("udp dst port 53"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pa, ok := matchTests(tt.a, nil)
			if !ok || len(pa) == 0 {
				t.Fatalf("matchTests(a): %d paths, %v", len(pa), ok)
			}
			pb, ok := matchTests(tt.b, nil)
			if !ok || len(pb) == 0 {
				t.Fatalf("matchTests(b): %d paths, %v", len(pb), ok)
			}
			if got := disjoint(pa, pb); got != tt.want {
				t.Errorf("disjoint: %v, want %v", got, tt.want)
			}
			if got := disjoint(pb, pa); got != tt.want {
				t.Errorf("disjoint, the other way: %v, want %v", got, tt.want)
			}
		})
	}
}

// TestDisjointGroups: groups no packet can match two of are tested largest
// first, the first found ending the test, and judge every packet as the
// rules one by one do; groups that overlap keep rule order.
func TestDisjointGroups(t *testing.T) {
	fixture.RequireRoot(t)
	bytecode := func(name string) string {
		t.Helper()
		p, err := bpfgen.Generate(bpfgen.Options{}, "dns", []string{name})
		if err != nil {
			t.Fatal(err)
		}
		text, err := cbpf.Format(p.Insns)
		if err != nil {
			t.Fatal(err)
		}
		return text
	}
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	t.Run("names of three lengths", func(t *testing.T) {
		// Names of one, two and three digits: three groups, the
		// smallest first in rule order, a pass rule in each.
		var b strings.Builder
		b.WriteString("rules:\n")
		var names []string
		for _, i := range []int{0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110} {
			name := fmt.Sprintf("host%d.bytecode.example", i)
			names = append(names, name)
			action := "drop"
			if i%5 == 1 {
				action = "pass"
			}
			fmt.Fprintf(&b, "  - name: r%d\n    action: %s\n    bpf: %q\n", i, action, bytecode(name))
		}
		obj, ref, gen := buildSets(t, "disjoint.yaml", b.String())
		if strings.Contains(gen.C, "__u32 best = L4_NONE") || len(gen.Meta.Sets) != 3 {
			t.Fatalf("%d sets, tested with best: %v; want three disjoint groups", len(gen.Meta.Sets), strings.Contains(gen.C, "__u32 best"))
		}
		var pkts [][]byte
		for _, name := range append(names, "host6.bytecode.example", "host99.bytecode.example", "host1000.bytecode.example", "hosts1.bytecode.example") {
			q := fixture.DNSQuery(name, 1)
			pkts = append(pkts, dnsPacket(false, 53, q), dnsPacket(true, 53, q), dnsPacket(false, 54, q),
				dnsPacket(false, 53, q[:len(q)-6]), dnsPacket(false, 53, q[:len(q)-4]))
			frag := dnsPacket(false, 53, q)
			frag[14+6] |= 0x20 // more fragments: still the first
			later := dnsPacket(false, 53, q)
			later[14+7] = 1 // a later fragment
			pkts = append(pkts, frag, later)
		}
		oneByOne(t, obj, ref, pkts, 25, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"r0", "r10", "r100", "r105"}})
	})
	t.Run("overlapping groups", func(t *testing.T) {
		// Rules of a TTL and a port, then more rules of the port alone:
		// a packet of both matches one of each, and the first must win,
		// though its group is smaller.
		var b strings.Builder
		b.WriteString("rules:\n")
		for i := range 6 {
			fmt.Fprintf(&b, "  - name: ttl-%d\n    action: pass\n    expr: \"ip[8] = 64 and udp dst port %d\"\n", i, 5000+i)
		}
		for i := range 10 {
			fmt.Fprintf(&b, "  - name: port-%d\n    expr: \"udp dst port %d\"\n", i, 5000+i)
		}
		obj, ref, gen := buildSets(t, "overlap.yaml", b.String())
		if !strings.Contains(gen.C, "__u32 best = L4_NONE") {
			t.Fatal("groups that overlap tested without best")
		}
		var pkts [][]byte
		for _, ttl := range []byte{63, 64} {
			for port := uint16(4999); port <= 5011; port++ {
				pkt := fixture.UDP4(c4, s4, 1, port, nil)
				pkt[14+8] = ttl
				pkts = append(pkts, pkt)
			}
		}
		oneByOne(t, obj, ref, pkts, 20, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"ttl-2"}})
	})
}
