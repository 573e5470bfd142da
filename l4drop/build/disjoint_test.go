package build

import (
	"fmt"
	"math/rand/v2"
	"slices"
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

// TestDisjointSound: no packet matches two matchers the analysis calls
// disjoint, over packets made to match the pool's matchers and copies of
// them with bytes changed, judged by x/net/bpf's interpreter.
func TestDisjointSound(t *testing.T) {
	var progs [][]bpf.Instruction
	var names []string
	for _, expr := range []string{"udp dst port 53", "udp dst port 54", "tcp dst port 53", "udp port 53",
		"ip[8] = 64", "ip[8] = 64 and udp dst port 53", "udp dst portrange 50-60", "src host 10.0.0.1",
		"src host 10.0.0.2", "src net 10.0.0.0/24", "ip6 and tcp dst port 80", "tcp dst port 80", "icmp",
		"ip proto 17", "len > 100 and udp dst port 53", "not udp dst port 53", "udp[8:4] = 0x0a0b0c0d",
		"ip[2:2] = 60 and ip proto 17", "ip6 and udp", "ip and udp"} {
		p, err := cbpf.Compile(expr, cbpf.LinkTypeRaw, 0)
		if err != nil {
			t.Fatal(err)
		}
		progs, names = append(progs, p), append(names, expr)
	}
	for _, name := range []string{"host1.example", "host10.example", "host1.example.com", "a.b", "ab.c"} {
		for _, v6 := range []bool{false, true} {
			p, err := bpfgen.Generate(bpfgen.Options{IPv6: v6}, "dns", []string{name})
			if err != nil {
				t.Fatal(err)
			}
			progs, names = append(progs, p.Insns), append(names, fmt.Sprintf("dns %s (v6 %v)", name, v6))
		}
	}
	tests := make([][][]eqTest, len(progs))
	vms := make([]*bpf.VM, len(progs))
	for i, p := range progs {
		var ok bool
		if tests[i], ok = matchTests(p, nil); !ok {
			t.Fatalf("%s: matchTests gave up", names[i])
		}
		vm, err := bpf.NewVM(p)
		if err != nil {
			t.Fatal(err)
		}
		vms[i] = vm
	}
	var pkts [][]byte
	for _, src := range []string{"10.0.0.1", "10.0.0.2", "192.0.2.1"} {
		for _, port := range []uint16{53, 54, 55, 80} {
			pkts = append(pkts, fixture.UDP4(src, fixture.ServerIPv4, 1, port, []byte{10, 11, 12, 13, 0, 0, 0, 0, 10, 11, 12, 13}),
				fixture.TCP4SYN(src, fixture.ServerIPv4, 1, port),
				fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, port, nil),
				fixture.TCP6SYN(fixture.ClientIPv6, fixture.ServerIPv6, 1, port))
		}
	}
	for _, name := range []string{"host1.example", "host10.example", "host1.example.com", "a.b", "ab.c", "host1.example.org"} {
		q := fixture.DNSQuery(name, 1)
		pkts = append(pkts, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, q), fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, 53, q))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, pkt := range pkts[:len(pkts):len(pkts)] {
		for range 40 {
			c := append([]byte(nil), pkt...)
			for range 1 + rng.IntN(3) {
				c[14+rng.IntN(len(c)-14)] = []byte{0, 0x40, 0x45, 0x60, 6, 17, 53, 64, byte(rng.Uint32())}[rng.IntN(9)]
			}
			pkts = append(pkts, c)
		}
	}
	claimed, both := 0, 0
	for i := range progs {
		for j := range i {
			if disjoint(tests[i], tests[j]) {
				claimed++
			}
		}
	}
	for _, pkt := range pkts {
		ip := pkt[14:] // the matchers see the packet from the IP header on
		var matched []int
		for i, vm := range vms {
			if n, err := vm.Run(ip); err == nil && n > 0 {
				matched = append(matched, i)
			}
		}
		for a, i := range matched {
			for _, j := range matched[:a] {
				both++
				if disjoint(tests[i], tests[j]) {
					t.Errorf("%q and %q called disjoint; both match % x", names[i], names[j], ip)
				}
			}
		}
	}
	if claimed == 0 || both == 0 {
		t.Errorf("%d pairs called disjoint, %d matched one packet together: a test that cannot fail", claimed, both)
	}
	t.Logf("%d matchers, %d pairs called disjoint, %d packets, %d matches of two matchers at once", len(progs), claimed, len(pkts), both)
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

// TestDNSPaths checks dnsPaths against bpfgen's cBPF for DNS rules, which
// the tables agree with: each path to a match of a rule's program passes
// the tests dnsPaths gives its family, but the IPv4 version, which
// l4_dns_name checks besides (the family's program runs on IPv4 packets).
func TestDNSPaths(t *testing.T) {
	version4 := eqTest{loc: loadLoc{off: 0, size: 1}, mask: 0xf0, val: 0x40}
	if got := dnsPaths([]compiledRule{{hashed: true, rule: &Rule{Family: FamilyAny}}}, []int{0}); len(got) != 2 {
		t.Fatalf("a rule of both families: %d paths, want 2", len(got))
	}
	for _, v6 := range []bool{false, true} {
		fam := FamilyIPv4
		if v6 {
			fam = FamilyIPv6
		}
		want := dnsPaths([]compiledRule{{hashed: true, rule: &Rule{Family: fam}}}, []int{0})
		if len(want) != 1 {
			t.Fatalf("family %s: %d paths", fam, len(want))
		}
		for _, name := range []string{"host1.example", "*.example.com", "a.b", "*.x"} {
			p, err := bpfgen.Generate(bpfgen.Options{IPv6: v6}, "dns", []string{name})
			if err != nil {
				t.Fatal(err)
			}
			paths, ok := matchTests(p.Insns, nil)
			if !ok || len(paths) == 0 {
				t.Fatalf("%s (v6 %v): matchTests: %d paths, ok %v", name, v6, len(paths), ok)
			}
			for _, path := range paths {
				for _, test := range want[0] {
					if !slices.Contains(path, test) && test != version4 {
						t.Errorf("%s (v6 %v): a path without %+v: %+v", name, v6, test, path)
					}
				}
			}
		}
	}
}

// TestDNSFirst: with groups and no blocks, the DNS tables are looked up
// first, and a packet they find a rule for goes through the groups that
// may match it too; with a block, the tables' rule joins best in rule
// order. Rules of names, ports with and without 53, TCP, TTLs, nets and
// IPv6, in an order where the tables' rule wins some packets and loses
// others, decide every packet as the same rules without sets do.
func TestDNSFirst(t *testing.T) {
	fixture.RequireRoot(t)
	for _, tt := range []struct {
		name    string
		monitor bool // a monitor rule: a block
	}{{"groups", false}, {"groups and a block", true}} {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			b.WriteString("rules:\n")
			rule := func(name, action, body string) {
				fmt.Fprintf(&b, "  - name: %s\n    action: %s\n    %s\n", name, action, body)
			}
			for i := range 8 {
				rule(fmt.Sprintf("port-%d", i), "drop", fmt.Sprintf("expr: \"udp dst port %d\"", 1000+i))
			}
			rule("a0", "drop", `dns: ["a0.example"]`)
			for i := range 8 {
				rule(fmt.Sprintf("ttl-%d", i), []string{"pass", "drop"}[i%2], fmt.Sprintf("expr: \"ip[8] = %d and udp dst port %d\"", 63+i%2, 50+i))
			}
			rule("wild", "pass", `dns: ["*.wild.example"]`)
			for i := range 8 {
				rule(fmt.Sprintf("tcp-%d", i), "drop", fmt.Sprintf("expr: \"tcp dst port %d\"", 50+i))
			}
			if tt.monitor {
				rule("mon", "monitor", `expr: "udp dst port 53 and ip[8] = 62"`)
			}
			rule("b1", "drop", "family: ipv4\n    dns: [\"b1.example\"]")
			rule("b2", "drop", "family: ipv6\n    dns: [\"b2.example\"]")
			for i := range 8 {
				rule(fmt.Sprintf("net-%d", i), "drop", fmt.Sprintf("expr: \"dst net 198.18.%d.0/24 and ip proto %d\"", i, []int{17, 6}[i%2]))
			}
			for i := 8; i < 16; i++ {
				rule(fmt.Sprintf("port-%d", i), "drop", fmt.Sprintf("expr: \"udp dst port %d\"", 1000+i))
			}
			for i := range 8 {
				rule(fmt.Sprintf("v6-%d", i), "drop", fmt.Sprintf("expr: \"ip6 and udp dst port %d\"", 50+i))
			}
			rule("c3", "drop", `dns: ["c3.example", "a0.example"]`)
			obj, ref, gen := buildSets(t, "dnsfirst.yaml", b.String())
			main, found, ok := strings.Cut(gen.C, "\ndns_found:\n")
			switch {
			case ok == tt.monitor:
				t.Fatalf("dns_found in the C: %v, want %v", ok, !tt.monitor)
			case ok:
				// The ports without 53 and TCP's: not tested after a name,
				// nor for a DNS query no name matched.
				found, other, _ := strings.Cut(found, "\ndns_other:\n")
				got, all, others := strings.Count(found, "= l4_p0_b"), strings.Count(main, "= l4_p0_b"), strings.Count(other, "= l4_p0_b")
				if got == 0 || got >= all || others != got {
					t.Errorf("%d items tested after the tables found a rule, %d for other DNS queries, %d else", got, others, all)
				}
			}
			var pkts [][]byte
			for _, name := range []string{"a0.example", "x.wild.example", "b1.example", "b2.example", "c3.example", "d4.example", "wild.example"} {
				q := fixture.DNSQuery(name, 1)
				for _, v6 := range []bool{false, true} {
					for _, port := range []uint16{53, 54} {
						pkts = append(pkts, dnsPacket(v6, port, q), dnsPacket(v6, port, q[:len(q)-5]))
					}
				}
				for ttl := byte(61); ttl <= 64; ttl++ {
					pkt := dnsPacket(false, 53, q)
					pkt[14+8] = ttl
					pkts = append(pkts, pkt)
				}
				tcp := fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53)
				later := dnsPacket(false, 53, q)
				later[14+7] = 1 // a later fragment
				pkts = append(pkts, tcp, later)
			}
			for port := uint16(1000); port < 1016; port += 3 {
				pkts = append(pkts, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, port, nil))
			}
			oneByOne(t, obj, ref, pkts, 40, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"a0", "ttl-3", "net-0"}})
		})
	}
}

// TestDNSFirstPrograms: the name tables hold every program's names, and a
// program takes only its own rules from them. Rules of ports, TTLs on
// port 53 and names split over programs, with and without a block:
// a packet of a TTL rule in the second program and a name in the third is
// the TTL rule's (the first program once took the name's, a later rule).
func TestDNSFirstPrograms(t *testing.T) {
	fixture.RequireRoot(t)
	for _, monitor := range []bool{false, true} {
		t.Run(fmt.Sprintf("monitor %v", monitor), func(t *testing.T) {
			var b strings.Builder
			b.WriteString("rules:\n")
			for i := range 40 {
				fmt.Fprintf(&b, "  - name: p%d\n    expr: \"udp dst port %d\"\n", i, 1000+i)
			}
			budget := 30
			if monitor {
				// A block where the first names are: their rule
				// joins best in rule order there.
				b.WriteString("  - name: mon\n    action: monitor\n    expr: \"udp dst port 53 and ip[8] = 99\"\n")
				budget = 80
			}
			b.WriteString("  - name: early\n    dns: [\"early.example\"]\n")
			for i := range 40 {
				fmt.Fprintf(&b, "  - name: t%d\n    action: %s\n    expr: \"ip[8] = %d and udp dst port 53\"\n", i, []string{"drop", "pass"}[i%2], 100+i)
			}
			for i := range 40 {
				fmt.Fprintf(&b, "  - name: q%d\n    expr: \"udp dst port %d\"\n", i, 2000+i)
			}
			b.WriteString("  - name: late\n    dns: [\"late.example\", \"early.example\"]\n")
			obj, ref, gen := buildSetsWith(t, "programs.yaml", b.String(), BuildOptions{MaxProgramInsns: budget})
			if len(gen.Meta.Programs) < 2 || strings.Count(gen.C, "dns_rule = ") < 2 {
				t.Fatalf("%d programs, %d looking names up; want names in two programs or more", len(gen.Meta.Programs), strings.Count(gen.C, "dns_rule = "))
			}
			var pkts [][]byte
			for _, name := range []string{"late.example", "early.example", "other.example"} {
				q := fixture.DNSQuery(name, 1)
				for ttl := byte(98); ttl < 145; ttl += 3 {
					pkt := dnsPacket(false, 53, q)
					pkt[14+8] = ttl
					pkts = append(pkts, pkt)
				}
			}
			oneByOne(t, obj, ref, pkts, 30, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"early", "t3"}})
		})
	}
}
