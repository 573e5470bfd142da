package build

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
)

func TestPrefixTest(t *testing.T) {
	for _, tt := range []struct {
		expr   string
		length int // 0: no prefix test
	}{
		{"src net 10.0.0.0/12", 12},
		{"dst net 192.168.0.0/31", 31},
		{"net 10.0.0.0/8", 8}, // the dst test: src's leads on to it
		{"src host 10.0.0.1", 0},
		{"src net 10.0.0.0/12 and udp", 0}, // a match needs more
		{"udp and src net 10.0.0.0/12", 12},
		{"src net 0.0.0.0/0", 0},
	} {
		t.Run(tt.expr, func(t *testing.T) {
			prog := ruleProg(t, tt.expr)
			pc, l, ok := prefixTest(prog)
			if !ok {
				if tt.length != 0 {
					t.Fatalf("no prefix test found, want /%d", tt.length)
				}
				return
			}
			if l != tt.length {
				t.Fatalf("prefix /%d at %d, want /%d", l, pc, tt.length)
			}
		})
	}
	// A constant with bits outside the mask never matches: no prefix.
	prog := ruleProg(t, "src net 10.0.0.0/12")
	pc, _, _ := prefixTest(prog)
	bad := append(prog[:0:0], prog...)
	raw, _ := bad[pc+1].Assemble()
	raw.K |= 1
	bad[pc+1] = raw.Disassemble()
	if _, _, ok := prefixTest(bad); ok {
		t.Error("jeq #v with bits outside the mask taken for a prefix")
	}
}

// TestPrefixLevels checks the levels chosen against every choice of
// levels, on random lengths and counts.
func TestPrefixLevels(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for n := range 2000 {
		var lens, counts []int
		for l := 1; l <= 31; l++ {
			if r.IntN(4) == 0 {
				lens = append(lens, l)
				counts = append(counts, 1+r.IntN(1<<r.IntN(12)))
			}
		}
		if len(lens) == 0 || len(lens) > 12 {
			continue
		}
		got := prefixLevels(lens, counts)
		// Every subset of lens that holds the longest is a choice.
		bestN, bestV := len(lens), -1
		k := len(lens)
		for mask := 0; mask < 1<<(k-1); mask++ {
			levels := foldTo(lens, mask|1<<(k-1))
			v, ok := levelCost(lens, counts, levels)
			nl := countLevels(levels)
			if ok && (nl < bestN || nl == bestN && v < bestV) {
				bestN, bestV = nl, v
			}
		}
		if bestN == len(lens) {
			if got != nil {
				t.Fatalf("case %d: lens %v counts %v: levels %v, want none (no fewer levels than lengths)", n, lens, counts, got)
			}
			continue
		}
		if got == nil {
			t.Fatalf("case %d: lens %v counts %v: no levels, want %d levels of %d entries", n, lens, counts, bestN, bestV)
		}
		v, ok := levelCost(lens, counts, got)
		if !ok || countLevels(got) != bestN || v != bestV {
			t.Fatalf("case %d: lens %v counts %v: levels %v (%d entries, allowed %v), want %d levels of %d entries", n, lens, counts, got, v, ok, bestN, bestV)
		}
	}
}

// foldTo returns each length's level: the shortest chosen length (bit i of
// chosen: lens[i]) not shorter than it.
func foldTo(lens []int, chosen int) []int {
	levels := make([]int, len(lens))
	for i := range lens {
		for j := i; j < len(lens); j++ {
			if chosen&(1<<j) != 0 {
				levels[i] = lens[j]
				break
			}
		}
	}
	return levels
}

// levelCost is the table entries of levels, and whether they are within
// the budget with minTableSet rules a level.
func levelCost(lens, counts, levels []int) (int, bool) {
	values := 0
	rules := map[int]int{}
	for i, l := range lens {
		if levels[i] < l || levels[i]-l > 16 {
			return 0, false
		}
		values += counts[i] << (levels[i] - l)
		rules[levels[i]] += counts[i]
	}
	for _, n := range rules {
		if n < minTableSet {
			return values, false
		}
	}
	return values, values <= maxFoldValues
}

func countLevels(levels []int) int {
	seen := map[int]bool{}
	for _, l := range levels {
		seen[l] = true
	}
	return len(seen)
}

// TestFoldedPrefixes: block lists of nested prefixes of many lengths,
// drop and pass, folded to fewer tables (by levels, or with the /32s by
// masks), judge every packet as the rules
// one by one do, with switches; where folding cannot hold (a level whose
// rules all have one value is no set) the rules are grouped as before.
func TestFoldedPrefixes(t *testing.T) {
	fixture.RequireRoot(t)
	r := rand.New(rand.NewPCG(3, 4))
	for n := range 6 {
		var b strings.Builder
		b.WriteString("rules:\n")
		var bases []uint32
		lengths := map[int]bool{}
		rules := 0
		for range 12 + r.IntN(40) {
			base := r.Uint32()
			bases = append(bases, base)
			// A few nested prefixes of the base, of random lengths.
			for range 1 + r.IntN(5) {
				// Odd sets have no /32, which mask folding needs: they
				// fold by levels.
				l := 8 + r.IntN(25-n%2)
				lengths[l] = true
				action := "drop"
				if r.IntN(4) == 0 {
					action = "pass"
				}
				a := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, base)))
				fmt.Fprintf(&b, "  - name: net-%d\n    action: %s\n    expr: \"src net %s\"\n", rules, action, netip.PrefixFrom(a, l).Masked())
				rules++
			}
		}
		obj, ref, gen := buildSets(t, fmt.Sprintf("fold%d.yaml", n), b.String())
		// A folded rule is a table entry for each value its prefix holds
		// at its level; unfolded, one.
		// A mask-folded set (the /32 hosts and the nets in one table)
		// holds each rule once, with its mask.
		entries := map[int]int{}
		masked := 0
		for _, g := range gen.Meta.Sets {
			for _, m := range g.Members {
				entries[m.Rule]++
			}
			if g.IndexMask != 0 {
				masked++
			}
		}
		if most := slices.Max(slices.Collect(maps.Values(entries))); len(gen.Meta.Sets) >= len(lengths) || most < 2 && masked == 0 || n%2 == 1 && masked > 0 {
			t.Errorf("set %d: %d tables for %d prefix lengths, at most %d entries a rule, %d masked: nothing folded",
				n, len(gen.Meta.Sets), len(lengths), most, masked)
		}
		var pkts [][]byte
		for _, base := range bases {
			for bit := -1; bit < 32; bit++ {
				a := base
				if bit >= 0 {
					a ^= 1 << bit
				}
				pkts = append(pkts, fixture.UDP4(netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, a))).String(), fixture.ServerIPv4, 1, 53, nil))
			}
		}
		for range 200 {
			pkts = append(pkts, fixture.UDP4(netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, r.Uint32()))).String(), fixture.ServerIPv4, 1, 53, nil))
		}
		oneByOne(t, obj, ref, pkts, len(pkts)/4, l4drop.LoadOptions{},
			l4drop.LoadOptions{Disable: []string{"net-0", "net-1", "net-2", "net-5"}})
	}

	// Four equal /12 and four equal /13 of one address: folded to /13,
	// every rule's constant is the same and no set forms; the rules are
	// grouped as they were.
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range 8 {
		fmt.Fprintf(&b, "  - name: same-%d\n    expr: \"src net 10.0.0.0/%d\"\n", i, 12+i/4)
	}
	obj, ref, _ := buildSets(t, "same.yaml", b.String())
	var pkts [][]byte
	for _, src := range []string{"10.0.0.1", "10.8.0.1", "10.16.0.1", "11.0.0.1"} {
		pkts = append(pkts, fixture.UDP4(src, fixture.ServerIPv4, 1, 53, nil))
	}
	oneByOne(t, obj, ref, pkts, 2, l4drop.LoadOptions{})
	oneByOne(t, obj, ref, pkts, 1, l4drop.LoadOptions{Disable: []string{"same-0", "same-1", "same-2", "same-3"}})
}

func TestUnionChain(t *testing.T) {
	for _, tt := range []struct {
		expr  string
		chain int // jeqs in the chain; 0: none
	}{
		{"src host 10.0.0.1 or src host 10.0.0.2", 2},
		{"src host 10.0.0.1 or src host 10.0.0.2 or src host 10.0.0.3", 3},
		{"udp dst port 53 or udp dst port 853", 3},                    // the IPv4 and IPv6 ports meet at 853
		{"(ip and udp dst port 53) or (ip6 and udp dst port 853)", 0}, // paths of other constants
		{"ip proto 17 and (ip[8] = 1 or ip[8] = 2)", 2},
		{"src host 10.0.0.1 or dst host 10.0.0.2", 0}, // another value
		{"src host 10.0.0.1", 0},
		{"(src host 10.0.0.1 or src host 10.0.0.2) and udp", 0}, // a match needs more
	} {
		t.Run(tt.expr, func(t *testing.T) {
			pcs, ok := unionChain(ruleProg(t, tt.expr))
			if len(pcs) != tt.chain || ok != (tt.chain > 0) {
				t.Fatalf("chain %v (%v), want %d jeqs", pcs, ok, tt.chain)
			}
		})
	}
}

// TestFoldedUnions: rules of a few hosts each, the same host in several
// rules, drop and pass, folded to one table whose entries are every host
// of every rule, judge every packet as the rules one by one do.
func TestFoldedUnions(t *testing.T) {
	fixture.RequireRoot(t)
	host := func(i int) string { return fmt.Sprintf("10.9.%d.%d", i/200, i%200) }
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range 150 {
		action := "drop"
		if i%7 == 3 {
			action = "pass"
		}
		// Hosts 2i, 2i+1 and 2i+3: the last is also the next rule's second.
		fmt.Fprintf(&b, "  - name: or-%d\n    action: %s\n    expr: \"src host %s or src host %s or src host %s\"\n", i, action, host(2*i), host(2*i+1), host(2*i+3))
	}
	obj, ref, gen := buildSets(t, "unions.yaml", b.String())
	if len(gen.Meta.Sets) != 1 || len(gen.Meta.Sets[0].Members) != 3*150 {
		t.Fatalf("%d sets, want one of 450 entries (three hosts a rule)", len(gen.Meta.Sets))
	}
	var pkts [][]byte
	for i := range 320 {
		pkts = append(pkts, fixture.UDP4(host(i), fixture.ServerIPv4, 1, 53, nil), fixture.TCP4SYN(fixture.ServerIPv4, host(i), 1, 80))
	}
	oneByOne(t, obj, ref, pkts, 250, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"or-0", "or-1", "or-3", "or-4", "or-10"}})

	// Port lists: the chain starts on the IPv4 and the IPv6 path.
	b.Reset()
	b.WriteString("rules:\n")
	for i := range 40 {
		fmt.Fprintf(&b, "  - name: ports-%d\n    expr: \"udp dst port %d or udp dst port %d\"\n", i, 2000+2*i, 2000+2*i+3)
	}
	obj, ref, gen = buildSets(t, "ports.yaml", b.String())
	if len(gen.Meta.Sets) != 1 || len(gen.Meta.Sets[0].Members) != 2*40 {
		t.Fatalf("%d sets, want one of 80 entries (two ports a rule)", len(gen.Meta.Sets))
	}
	pkts = pkts[:0]
	for port := uint16(1995); port < 2090; port++ {
		pkts = append(pkts, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, port, nil), fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, port, nil))
	}
	oneByOne(t, obj, ref, pkts, 100, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"ports-0", "ports-2", "ports-39"}})
}
