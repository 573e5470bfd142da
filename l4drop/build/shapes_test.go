package build

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/l4drop"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestSets: rules that differ only in a constant, tested at once, decide
// every packet as the same rules tried one by one: order, duplicates,
// switches, families, actions, and rules that fall back to one by one.
func TestSets(t *testing.T) {
	fixture.RequireRoot(t)
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := 0; i < 40; i++ {
		port := 3000 + i
		if i == 5 {
			port = 3003 // a duplicate of rule udp-3
		}
		fmt.Fprintf(&b, "  - name: udp-%d\n    expr: \"udp dst port %d\"\n", i, port)
	}
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "  - name: tcp6-%d\n    family: ipv6\n    expr: \"ip6 and tcp dst port %d\"\n    action: pass\n", i, 5000+i)
	}
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "  - name: not-%d\n    family: ipv6\n    expr: \"not udp dst port %d\"\n", i, 6000+i)
	}
	// A table that decides, but a candidate found must still run: the
	// source port's low byte is tested after the constant.
	for i := 0; i < 6; i++ {
		fmt.Fprintf(&b, "  - name: sport1-%d\n    expr: \"udp dst port %d and udp[1] = 1\"\n", i, 7000+i)
	}
	obj, ref, gen := buildSets(t, "sets.yaml", b.String())
	if len(gen.Meta.Sets) < 3 {
		t.Fatalf("%d sets; want the udp, the tcp6 and the sport1 rules tested at once", len(gen.Meta.Sets))
	}
	var pkts [][]byte
	c4, s4, c6, s6 := fixture.ClientIPv4, fixture.ServerIPv4, fixture.ClientIPv6, fixture.ServerIPv6
	for port := uint16(2998); port < 3042; port++ {
		pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, nil), fixture.UDP6(c6, s6, 1, port, nil))
	}
	for port := uint16(4999); port < 5022; port++ {
		pkts = append(pkts, fixture.TCP6SYN(c6, s6, 1, port), fixture.TCP4SYN(c4, s4, 1, port))
	}
	for _, port := range []uint16{6000, 6005, 6019, 6020, 53} {
		pkts = append(pkts, fixture.UDP6(c6, s6, 1, port, nil))
	}
	for port := uint16(6999); port < 7007; port++ {
		pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, nil), fixture.UDP4(c4, s4, 2, port, nil))
	}
	oneByOne(t, obj, ref, pkts, len(pkts)/2, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"udp-3", "udp-10", "tcp6-0"}}, l4drop.LoadOptions{Disable: []string{"udp-5"}})
}

func TestTableDecides(t *testing.T) {
	tests := []struct {
		expr         string // with %d for the constant
		want, direct bool
	}{
		{"udp dst port %d", true, true},
		{"ip6 and tcp dst port %d", true, true},
		{"udp port %d", true, true},                     // src or dst: two tests a path
		{"not udp dst port %d", false, false},           // matches when the test fails
		{"udp dst port %d or tcp", false, true},         // matches without the test
		{"udp dst port %d and udp[8] = 1", true, false}, // more to test after it
	}
	for _, tt := range tests {
		var progs [][]bpf.Instruction
		for _, port := range []int{1000, 2000, 3000} {
			progs = append(progs, ruleProg(t, fmt.Sprintf(tt.expr, port)))
		}
		_, jumps, ok := shapeKey(progs[0])
		if !ok {
			t.Fatalf("%q: no shape", tt.expr)
		}
		params := shapeParams(progs, jumps)
		if len(params) != 1 {
			t.Fatalf("%q: %d parameters, want 1", tt.expr, len(params))
		}
		isParam := make([]bool, len(progs[0]))
		for _, pc := range params[0] {
			isParam[pc] = true
		}
		if got := tableDecides(progs[0], isParam); got != tt.want {
			t.Errorf("%q: tableDecides = %v, want %v", tt.expr, got, tt.want)
		}
		if got := equalMatches(progs[0], isParam); got != tt.direct {
			t.Errorf("%q: equalMatches = %v, want %v", tt.expr, got, tt.direct)
		}
	}
}

// sameVerdicts runs pkts through d and ref, reports where they differ, and
// returns how many packets a rule matched.
func sameVerdicts(t *testing.T, what string, d, ref *l4drop.DryRun, pkts [][]byte) int {
	t.Helper()
	matched := 0
	for i, pkt := range pkts {
		got, err := d.Run(pkt)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ref.Run(pkt)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: packet %d: %+v, one by one %+v", what, i, got, want)
		}
		if got.Rule != l4drop.NoRule {
			matched++
		}
	}
	return matched
}

// buildSets builds the rule set text as it is and with no sets (every rule
// one by one), for comparing the two.
func buildSets(t *testing.T, name, text string) (obj, ref []byte, gen *Generated) {
	t.Helper()
	return buildSetsWith(t, name, text, BuildOptions{})
}

// buildSetsWith is buildSets, obj built with opts.
func buildSetsWith(t *testing.T, name, text string, opts BuildOptions) (obj, ref []byte, gen *Generated) {
	t.Helper()
	rs, err := ParseRuleSet(name, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if obj, gen, err = Build(rs, opts); err != nil {
		t.Fatal(err)
	}
	if ref, _, err = Build(rs, BuildOptions{NoSets: true}); err != nil {
		t.Fatal(err)
	}
	return obj, ref, gen
}

// oneByOne checks that obj and ref (buildSets) judge pkts alike with each
// of the switches in optss, and that a rule matched at least minMatched.
func oneByOne(t *testing.T, obj, ref []byte, pkts [][]byte, minMatched int, optss ...l4drop.LoadOptions) {
	t.Helper()
	for _, opts := range optss {
		d, err := l4drop.NewDryRun(obj, opts)
		if err != nil {
			t.Fatal(err)
		}
		r, err := l4drop.NewDryRun(ref, opts)
		if err != nil {
			d.Close()
			t.Fatal(err)
		}
		if matched := sameVerdicts(t, fmt.Sprint(opts.Disable), d, r, pkts); matched < minMatched {
			t.Errorf("%v: only %d of %d packets matched a rule", opts.Disable, matched, len(pkts))
		}
		d.Close()
		r.Close()
	}
}

// TestKeyedSets: rules that differ in two constants, tested at once as one
// table keyed by both, decide every packet as the same rules tried one by
// one: order, duplicates, switches, families and actions.
func TestKeyedSets(t *testing.T) {
	fixture.RequireRoot(t)
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := 0; i < 12; i++ {
		ttl, port := 60+i%3, 4000+i
		if i == 7 {
			ttl, port = 62, 4002 // a duplicate of rule ttl-2
		}
		fmt.Fprintf(&b, "  - name: ttl-%d\n    expr: \"ip[8] = %d and udp dst port %d\"\n", i, ttl, port)
	}
	for i := 0; i < 8; i++ {
		fmt.Fprintf(&b, "  - name: src-%d\n    action: pass\n    expr: \"tcp dst port %d and src host 10.0.0.%d\"\n", i, 80+i%2, 1+i)
	}
	for i := 0; i < 6; i++ {
		fmt.Fprintf(&b, "  - name: net-%d\n    family: ipv4\n    expr: \"dst net 10.1.%d.0/24 and ip proto %d\"\n", i, i, []int{6, 17}[i%2])
	}
	obj, ref, gen := buildSets(t, "keyed.yaml", b.String())
	keyed := 0
	for _, g := range gen.Meta.Sets {
		if g.Keys == 2 {
			keyed++
		}
	}
	if keyed != 3 {
		t.Fatalf("%d sets keyed by two constants (%+v); want the ttl, src and net rules tested at once", keyed, gen.Meta.Sets)
	}
	var pkts [][]byte
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	for ttl := 59; ttl <= 63; ttl++ {
		for port := uint16(3999); port < 4013; port++ {
			pkt := fixture.UDP4(c4, s4, 1, port, nil)
			pkt[14+8] = byte(ttl)
			pkts = append(pkts, pkt)
		}
	}
	for src := 0; src <= 9; src++ {
		for port := uint16(79); port <= 82; port++ {
			pkts = append(pkts, fixture.TCP4SYN(fmt.Sprintf("10.0.0.%d", src), s4, 1, port))
		}
	}
	for net := 0; net <= 6; net++ {
		dst := fmt.Sprintf("10.1.%d.5", net)
		pkts = append(pkts, fixture.UDP4(c4, dst, 1, 53, nil), fixture.TCP4SYN(c4, dst, 1, 80))
	}
	pkts = append(pkts, fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, 4000, nil))
	oneByOne(t, obj, ref, pkts, 20, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"ttl-2", "ttl-5", "src-0", "net-3"}}, l4drop.LoadOptions{Disable: []string{"ttl-7"}})
}

func TestKeyedDecides(t *testing.T) {
	tests := []struct {
		expr string // with %[1]d, %[2]d... for the constants
		want bool
	}{
		{"ip[8] = %[1]d and udp dst port %[2]d", true},
		{"tcp dst port %[1]d and src host 10.0.%[2]d.1", true},
		{"dst net 10.%[1]d.0.0/16 and ip proto %[2]d", true},
		{"udp dst port %[1]d and udp src port %[2]d and ip[8] = %[3]d", true},
		{"udp dst port %[1]d or ip[8] = %[2]d", false},      // a failed test leads to a match
		{"ip[8] = %[1]d and not udp dst port %[2]d", false}, // matches when a test fails
		// The IPv6 path tests no TTL.
		{"(ip and ip[8] = %[1]d and udp dst port %[2]d) or (ip6 and udp dst port %[3]d)", false},
	}
	for _, tt := range tests {
		var progs [][]bpf.Instruction
		for k := 0; k < 3; k++ {
			progs = append(progs, ruleProg(t, fmt.Sprintf(tt.expr, 10+k, 20+2*k, 30+3*k)))
		}
		_, jumps, ok := shapeKey(progs[0])
		if !ok {
			t.Fatalf("%q: no shape", tt.expr)
		}
		params := shapeParams(progs, jumps)
		if want := strings.Count(tt.expr, "%["); len(params) != want {
			t.Fatalf("%q: %d parameters, want %d", tt.expr, len(params), want)
		}
		if got := keyedDecides(progs[0], params); got != tt.want {
			t.Errorf("%q: keyedDecides = %v, want %v", tt.expr, got, tt.want)
		}
	}
}

// ruleProg returns the cBPF of a one-rule set's expression, as the
// generator lowers it.
func ruleProg(t *testing.T, expr string) []bpf.Instruction {
	t.Helper()
	rs, err := ParseRuleSet("t.yaml", []byte(fmt.Sprintf("rules:\n  - name: r\n    expr: %q\n", expr)))
	if err != nil {
		t.Fatal(err)
	}
	ms, err := (*Frontend)(nil).matchers(rs, &rs.Rules[0])
	if err != nil {
		t.Fatal(err)
	}
	return ms[0].prog
}

// TestMergedSets: a set's rules spread among others, drop and pass, are
// one table per program, tested where the first of them is, and decide
// every packet as the same rules tried one by one: a group's match comes
// before a later item's, after an earlier one's, and rules whose test does
// something (monitor counts, ratelimit tokens) past the group's match are
// not tested.
func TestMergedSets(t *testing.T) {
	fixture.RequireRoot(t)
	rules := []string{
		"name: udp-0\n    expr: \"udp dst port 3000\"",
		"name: tag-a\n    expr: \"udp and udp[8] = 0x41\"",
		"name: udp-1\n    expr: \"udp dst port 3001\"",
		"name: count-udp\n    action: monitor\n    expr: \"udp\"",
		"name: tcp-0\n    expr: \"tcp dst port 80 and src host 10.0.0.1\"",
		"name: name\n    dns: [\"www.example.org\"]",
		"name: udp-2\n    expr: \"udp dst port 3002\"",
		"name: tag-b\n    expr: \"udp and udp[8] = 0x42\"",
		"name: udp-4\n    expr: \"udp dst port 3004\"",
		"name: tag-0\n    expr: \"udp and udp[8] = 0\"",
		"name: limit\n    action: ratelimit\n    rate: 1\n    burst: 2\n    expr: \"udp\"",
		"name: tcp-1\n    expr: \"tcp dst port 81 and src host 10.0.0.1\"",
		"name: pass-3006\n    action: pass\n    expr: \"udp dst port 3006\"",
		"name: udp-dup\n    expr: \"udp dst port 3000\"",
		"name: udp-5\n    expr: \"udp dst port 3005\"",
		"name: tcp-2\n    expr: \"tcp dst port 80 and src host 10.0.0.2\"",
		"name: tcp-3\n    expr: \"tcp dst port 82 and src host 10.0.0.3\"",
	}
	text := "rules:\n  - " + strings.Join(rules, "\n  - ") + "\n"
	rs, err := ParseRuleSet("merged.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	obj, gen, err := Build(rs, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got [][]int
	for _, g := range gen.Meta.Sets {
		var members []int
		for _, m := range g.Members {
			members = append(members, m.Rule)
		}
		got = append(got, members)
	}
	if want := "[[0 2 6 8 12 13 14] [4 11 15 16]]"; fmt.Sprint(got) != want {
		t.Fatalf("sets %v, want %s: each shape's rules one table, drop and pass", got, want)
	}
	ref, _, err := Build(rs, BuildOptions{NoSets: true})
	if err != nil {
		t.Fatal(err)
	}
	var pkts [][]byte
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	// Down from 3006: the packets a group matches come before those only
	// the limit judges, whose tokens they must leave alone.
	for port := uint16(3006); port >= 2999; port-- {
		for _, tag := range []byte{0, 0x41, 0x42, 0x43} {
			for range 2 {
				pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, []byte{tag}))
			}
		}
	}
	for _, src := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"} {
		for port := uint16(79); port <= 83; port++ {
			pkts = append(pkts, fixture.TCP4SYN(src, s4, 1, port))
		}
	}
	pkts = append(pkts, fixture.UDP4(c4, s4, 3000, 53, fixture.DNSQuery("www.example.org", 1)))
	for _, opts := range []l4drop.LoadOptions{{}, {Disable: []string{"udp-0", "tcp-0", "tag-a"}}, {Disable: []string{"udp-dup", "count-udp"}}} {
		d, err := l4drop.NewDryRun(obj, opts)
		if err != nil {
			t.Fatal(err)
		}
		r, err := l4drop.NewDryRun(ref, opts)
		if err != nil {
			t.Fatal(err)
		}
		if matched := sameVerdicts(t, fmt.Sprint(opts.Disable), d, r, pkts); matched < len(pkts)/2 {
			t.Errorf("%v: only %d of %d packets matched a rule", opts.Disable, matched, len(pkts))
		}
		d.Close()
		r.Close()
	}
}

// TestManyGroupsInline: twelve shapes of six rules each are ten groups;
// they are inlined however many there are (a call each cost more than the
// group), and judge as the rules one by one do.
func TestManyGroupsInline(t *testing.T) {
	fixture.RequireRoot(t)
	shapes := []string{"udp dst port %d", "udp src port %d", "tcp dst port %d", "tcp src port %d", "ip[8] = %d",
		"ip[1] = %d", "src host 10.1.0.%d", "dst host 10.2.0.%d", "ip[4:2] = %d", "ip[6] = %d", "ip[7] = %d", "ip[5] = %d"}
	var b strings.Builder
	b.WriteString("rules:\n")
	for k := range 6 {
		for j, shape := range shapes {
			action := "drop"
			if (j+k)%4 == 0 {
				action = "pass"
			}
			fmt.Fprintf(&b, "  - name: s%d-%d\n    action: %s\n    expr: %q\n", j, k, action, fmt.Sprintf(shape, 1+k+j))
		}
	}
	obj, ref, gen := buildSets(t, "groups.yaml", b.String())
	if n := len(gen.Meta.Sets); n != len(shapes)-2 || n <= maxInlineItems {
		t.Fatalf("%d sets, want %d: one a shape, udp and tcp dst ports one keyed by protocol and port, as are src ports", n, len(shapes)-2)
	}
	if strings.Contains(gen.C, "noinline)) __u32 l4_p0_b") {
		t.Error("a group is a function of its own: want every group inlined")
	}
	var pkts [][]byte
	for v := uint16(0); v < 18; v++ {
		src, dst := fmt.Sprintf("10.1.0.%d", v), fmt.Sprintf("10.2.0.%d", 17-v)
		pkts = append(pkts, fixture.UDP4(src, dst, v, 17-v, nil), fixture.TCP4SYN(dst, src, 17-v, v))
	}
	oneByOne(t, obj, ref, pkts, len(pkts)/4, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"s0-0", "s6-1", "s2-3"}})
}

// The DNS tables are inlined where only tables (DNS names, sets, merged
// sets) follow them, and called as a global function where single rules
// do (each of which the verifier would otherwise walk once per way out of
// the tables); both forms give the same verdicts.
func TestDNSTablesInline(t *testing.T) {
	fixture.RequireRoot(t)
	ports := func(from, n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "  - name: port-%d\n    expr: \"udp dst port %d\"\n", from+i, from+i)
		}
		return b.String()
	}
	const names = "  - name: exact\n    dns: [\"www.attack.example\"]\n  - name: wild\n    dns: [\"*.zone.example\"]\n"
	for _, tt := range []struct {
		name, rules string
		inline      bool
	}{
		{"names alone", names, true},
		{"names, then a set", names + ports(1000, 20), true},
		{"a set, names, a set", ports(2000, 20) + names + ports(1000, 20), true},
		{"names, then single rules", names + "  - name: tag\n    expr: \"udp and udp[8] = 0x41\"\n  - name: syn\n    expr: \"tcp[13] = 2\"\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := ParseRuleSet("dns.yaml", []byte("rules:\n"+tt.rules))
			if err != nil {
				t.Fatal(err)
			}
			obj, gen, err := Build(rs, BuildOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(gen.C, "dns_rule = l4_dns_in("); got != tt.inline {
				t.Errorf("tables inlined: %v, want %v", got, tt.inline)
			}
			if got := strings.Contains(gen.C, "dns_rule = l4_dns_at("); got == tt.inline {
				t.Errorf("tables called: %v, want %v", got, !tt.inline)
			}
			d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for _, c := range []struct {
				qname, want string
			}{{"www.attack.example", "exact"}, {"x1.zone.example", "wild"}, {"www.example.org", ""}} {
				v, err := d.Run(fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53, fixture.DNSQuery(c.qname, 1)))
				if err != nil {
					t.Fatal(err)
				}
				got := ""
				if v.Rule != l4drop.NoRule {
					got = rs.Rules[v.Rule].Name
				}
				if got != c.want {
					t.Errorf("%s: rule %q, want %q", c.qname, got, c.want)
				}
			}
		})
	}
}

// TestRangeSets: port ranges of one shape are a set whose table holds
// every value of every range, and decide every packet as the same rules
// tried one by one: overlaps (the first rule wins), drop and pass, either
// direction (two values a packet), both families, later fragments,
// malformed packets, switches. Ranges too wide for a table are not a set.
func TestRangeSets(t *testing.T) {
	fixture.RequireRoot(t)
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := 0; i < 40; i++ {
		lo := 3000 + 7*i
		action := "drop"
		if i%9 == 4 {
			action = "pass"
		}
		fmt.Fprintf(&b, "  - name: dst-%d\n    action: %s\n    expr: \"udp dst portrange %d-%d\"\n", i, action, lo, lo+9) // overlapping
	}
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "  - name: either-%d\n    expr: \"tcp portrange %d-%d\"\n", i, 5000+4*i, 5000+4*i+2)
	}
	for i := 0; i < 12; i++ {
		fmt.Fprintf(&b, "  - name: src4-%d\n    family: ipv4\n    expr: \"udp src portrange %d-%d\"\n", i, 100*i, 100*i+50)
	}
	obj, ref, gen := buildSets(t, "ranges.yaml", b.String())
	if len(gen.Meta.Sets) != 3 {
		t.Fatalf("%d sets; want the dst, either and src ranges each tested at once", len(gen.Meta.Sets))
	}
	c4, s4, c6, s6 := fixture.ClientIPv4, fixture.ServerIPv4, fixture.ClientIPv6, fixture.ServerIPv6
	var pkts [][]byte
	for port := uint16(2995); port < 3300; port += 2 {
		pkts = append(pkts, fixture.UDP4(c4, s4, 40000, port, nil), fixture.UDP6(c6, s6, 40000, port, nil))
	}
	for port := uint16(4995); port < 5085; port++ {
		pkts = append(pkts, fixture.TCP4SYN(c4, s4, port, 80), fixture.TCP4SYN(c4, s4, 80, port), fixture.TCP6SYN(c6, s6, 9, port))
	}
	for port := uint16(0); port < 1300; port += 37 {
		pkts = append(pkts, fixture.UDP4(c4, s4, port, 9, nil), fixture.UDP6(c6, s6, port, 9, nil))
	}
	for _, p := range pkts[:40] {
		pkts = append(pkts, malformed(p)...)
	}
	oneByOne(t, obj, ref, pkts, 100, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"dst-3", "dst-4", "either-0", "src4-1"}})

	// 20 ranges of 4,000 ports hold more than a table takes: they are
	// tested in two runs that fit one each (16 rules, 64,016 values; 4).
	b.Reset()
	b.WriteString("rules:\n")
	for i := 0; i < 20; i++ {
		action := "drop"
		if i%5 == 2 {
			action = "pass"
		}
		fmt.Fprintf(&b, "  - name: wide-%d\n    action: %s\n    expr: \"udp dst portrange %d-%d\"\n", i, action, 1000+97*i, 5000+97*i)
	}
	obj, ref, gen = buildSets(t, "wide.yaml", b.String())
	var sizes []int
	for _, g := range gen.Meta.Sets {
		sizes = append(sizes, len(g.Members))
	}
	if fmt.Sprint(sizes) != "[64016 16004]" {
		t.Errorf("ranges of 80,020 ports in all: sets of %v values, want [64016 16004]", sizes)
	}
	pkts = pkts[:0]
	for port := uint16(900); port < 7100; port += 13 {
		pkts = append(pkts, fixture.UDP4(c4, s4, 40000, port, nil), fixture.UDP6(c6, s6, 40000, port, nil))
	}
	oneByOne(t, obj, ref, pkts, 100, l4drop.LoadOptions{}, l4drop.LoadOptions{Disable: []string{"wide-0", "wide-1", "wide-16", "wide-17"}})
}

func TestRangeShape(t *testing.T) {
	for _, tt := range []struct {
		expr string // with %[1]d and %[2]d for the two constants
		want bool
	}{
		{"udp dst portrange %[1]d-%[2]d", true},
		{"tcp portrange %[1]d-%[2]d", true},
		{"ip[8] = 64 and udp src portrange %[1]d-%[2]d", true},
		{"udp src portrange %[1]d-%[2]d and ip[8] = 64", false},         // in range is no match yet
		{"udp[2:2] > %[1]d and udp[2:2] < %[2]d", false},                // jgt then jge: not pcap's range
		{"len >= %[1]d and len <= %[2]d", true},                         // a range (readsLen keeps it from sharing)
		{"udp dst portrange %[1]d-%[2]d or udp dst port 7", true},       // out of range goes on as below it does
		{"udp dst portrange %[1]d-%[2]d and not udp src port 7", false}, // in range is no match yet
	} {
		a, b := ruleProg(t, fmt.Sprintf(tt.expr, 1000, 1010)), ruleProg(t, fmt.Sprintf(tt.expr, 2000, 2020))
		_, jumps, _ := shapeKey(a)
		params := shapeParams([][]bpf.Instruction{a, b}, jumps)
		if got := rangeShape(a, params); got != tt.want {
			t.Errorf("%q: rangeShape = %v, want %v (params %v)", tt.expr, got, tt.want, params)
		}
	}
}

// TestMaskedSets: `src host A` and `src net A/L` rules, interleaved, of
// three lengths, drop and pass, hosts in nets before and after them, are
// one table whose slots carry their masks (mask folding), and decide every
// packet as the same rules one by one, with switches that change which of
// the overlapping rules comes first. A family with more rules under its
// shortest prefix than a bucket takes is left as it was.
func TestMaskedSets(t *testing.T) {
	fixture.RequireRoot(t)
	rules := []struct{ name, action, expr string }{
		{"n16", "drop", "src net 10.1.0.0/16"},
		{"h-in-n16", "pass", "src host 10.1.2.3"}, // after the net that holds it
		{"h-before-n24", "pass", "src host 10.2.0.5"},
		{"n24", "drop", "src net 10.2.0.0/24"},
		{"n28", "drop", "src net 10.3.0.0/28"},
		{"h-out-n28", "pass", "src host 10.3.0.20"},
		{"h-in-n28", "pass", "src host 10.3.0.7"},
	}
	for i := range 6 {
		rules = append(rules,
			struct{ name, action, expr string }{fmt.Sprintf("h4-%d", i), []string{"drop", "pass"}[i%2], fmt.Sprintf("src host 10.4.0.%d", 1+i)},
			struct{ name, action, expr string }{fmt.Sprintf("n5-%d", i), "drop", fmt.Sprintf("src net 10.5.%d.0/24", i)})
	}
	// Thirteen under one /12: more than a bucket takes.
	rules = append(rules, struct{ name, action, expr string }{"d12", "drop", "dst net 172.16.0.0/12"})
	for i := range 12 {
		rules = append(rules, struct{ name, action, expr string }{fmt.Sprintf("d-%d", i), "pass", fmt.Sprintf("dst host 172.16.0.%d", 1+i)})
	}
	var b strings.Builder
	b.WriteString("rules:\n")
	for _, r := range rules {
		fmt.Fprintf(&b, "  - name: %s\n    action: %s\n    expr: %q\n", r.name, r.action, r.expr)
	}
	obj, ref, gen := buildSets(t, "masked.yaml", b.String())
	var masked []l4drop.SetGroup
	for _, g := range gen.Meta.Sets {
		if g.IndexMask != 0 {
			masked = append(masked, g)
		}
	}
	if len(masked) != 1 || masked[0].IndexMask != 0xffff0000 || len(masked[0].Members) != 19 {
		t.Fatalf("masked sets %+v; want one, of the 19 src rules, indexed by /16", masked)
	}
	var pkts [][]byte
	srcs := []string{"10.1.2.3", "10.1.9.9", "10.2.0.5", "10.2.0.6", "10.2.1.5", "10.3.0.7", "10.3.0.15", "10.3.0.16", "10.3.0.20", "10.6.0.1", "192.0.2.1"}
	for i := range 8 {
		srcs = append(srcs, fmt.Sprintf("10.4.0.%d", i), fmt.Sprintf("10.5.%d.%d", i, 1+i*30))
	}
	for _, src := range srcs {
		pkt := fixture.UDP4(src, fixture.ServerIPv4, 1, 53, nil)
		// Cut short in the source address: no rule may match.
		pkts = append(pkts, pkt, pkt[:14+14])
	}
	for i := range 14 {
		pkts = append(pkts, fixture.UDP4(fixture.ClientIPv4, fmt.Sprintf("172.16.0.%d", i), 1, 53, nil))
	}
	pkts = append(pkts, fixture.UDP4(fixture.ClientIPv4, "172.31.1.1", 1, 53, nil), fixture.UDP4(fixture.ClientIPv4, "172.32.0.1", 1, 53, nil))
	oneByOne(t, obj, ref, pkts, 20, l4drop.LoadOptions{},
		l4drop.LoadOptions{Disable: []string{"n16", "h-before-n24", "n28", "h4-2", "n5-3", "d12"}},
		l4drop.LoadOptions{Disable: []string{"h-in-n16", "n24", "h-out-n28", "h4-0", "n5-0", "d-3"}})
}

// TestBoundedSets: rules alike but for a key and a bound (`udp dst port P
// and len > N`, `len >= N`, `len < N`, a TTL above or up to T from a host) are tested
// at once, one table keyed by the rest, and decide every packet as the
// same rules one by one: several rules a key with bounds that rise and
// fall, drop and pass, IPv4 and IPv6, with switches that change which of
// a key's rules can come first. A key with more falling bounds than a
// bucket has slots leaves its class one by one. Rules testing the length
// for equality, which no shared function can read, are a keyed set.
func TestBoundedSets(t *testing.T) {
	fixture.RequireRoot(t)
	var b strings.Builder
	b.WriteString("rules:\n")
	for i, n := range []int{300, 120, 250, 400, 100, 90, 50, 600, 500, 270, 220, 160} {
		action := []string{"drop", "pass"}[i%3/2]
		fmt.Fprintf(&b, "  - name: gt-%d\n    action: %s\n    expr: \"udp dst port %d and len > %d\"\n", i, action, 5000+i%4, n)
	}
	for i, n := range []int{200, 100, 150, 80, 300, 120} {
		fmt.Fprintf(&b, "  - name: ge-%d\n    expr: \"udp src port %d and len >= %d\"\n", i, 7000+i%2, n)
	}
	for i := range 8 {
		fmt.Fprintf(&b, "  - name: ttl-%d\n    expr: \"ip[8] > %d and src host 10.0.0.%d\"\n", i, 60+i%3, 1+i%4)
	}
	// Upper bounds: a jge (len < N) and a jgt (ip[8] <= T) whose true
	// branch never matches.
	for i, n := range []int{100, 300, 200, 60, 250, 90} {
		fmt.Fprintf(&b, "  - name: lt-%d\n    expr: \"udp dst port %d and len < %d\"\n", i, 6000+i%3, n)
	}
	for i := range 6 {
		fmt.Fprintf(&b, "  - name: le-%d\n    action: pass\n    expr: \"ip[8] <= %d and src host 10.0.1.%d\"\n", i, 60+(i*7)%5, 1+i%3)
	}
	// The length tested for equality: a keyed set that reads the length,
	// which no shared function can.
	for i := range 6 {
		fmt.Fprintf(&b, "  - name: len-%d\n    expr: \"udp dst port %d and len = %d\"\n", i, 8000+i%2, 100+10*i)
	}
	// Keys with more falling bounds than a bucket of 4 holds: five for
	// one port, ten in another order for another (buckets of 16 slots),
	// and 65 for a third, more than any bucket holds: one by one.
	for i, n := range []int{500, 400, 300, 200, 100} {
		fmt.Fprintf(&b, "  - name: five-%d\n    expr: \"tcp dst port 9000 and len > %d\"\n", i, n)
	}
	for i, n := range []int{900, 950, 800, 700, 720, 600, 500, 400, 450, 300, 200, 250, 100, 90} {
		fmt.Fprintf(&b, "  - name: ten-%d\n    expr: \"tcp dst port 9001 and len > %d\"\n", i, n)
	}
	for i := range l4drop.MaxBucketSlots + 1 {
		fmt.Fprintf(&b, "  - name: many-%d\n    expr: \"tcp dst port 9002 and len > %d\"\n", i, 1000-10*i)
	}
	// Forty falling bounds on each of two keys of a shape of their own:
	// buckets of 64 slots; then three that only switches can make first.
	for i := range 80 {
		fmt.Fprintf(&b, "  - name: src-%d\n    expr: \"udp src port %d and len > %d\"\n", i, 9003+i%2, 1000-20*(i/2))
	}
	for i, n := range []int{500, 990, 230} {
		fmt.Fprintf(&b, "  - name: src-%d\n    expr: \"udp src port 9003 and len > %d\"\n", 80+i, n)
	}
	obj, ref, gen := buildSets(t, "bounded.yaml", b.String())
	// The gt rules and the five and ten share a table (the protocol is a
	// key), of 16 slots a bucket; the src rules one of 64; the many go
	// one by one.
	bounded, keyed := 0, 0
	slots := map[string]int{} // a rule's name's prefix: its table's slots
	for _, g := range gen.Meta.Sets {
		switch {
		case g.Bounded:
			bounded++
		case g.Keys == 2:
			keyed++
		}
		for _, mb := range g.Members {
			prefix, _, _ := strings.Cut(gen.Meta.Rules[mb.Rule].Name, "-")
			slots[prefix] = max(g.Slots, l4drop.HashSlots)
		}
	}
	want := map[string]int{"gt": 16, "five": 16, "ten": 16, "ge": 4, "ttl": 4, "lt": 4, "le": 4, "len": 4, "src": 64}
	if bounded != 6 || keyed != 1 || !maps.Equal(slots, want) {
		t.Fatalf("%d bounded sets, %d keyed, tables' slots by rule %v (%+v); want 6 bounded, the len rules keyed, %v, and the many one by one",
			bounded, keyed, slots, gen.Meta.Sets, want)
	}
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	var pkts [][]byte
	for _, size := range []int{0, 20, 40, 60, 62, 63, 100, 150, 200, 230, 240, 260, 300, 400, 560, 600} {
		payload := make([]byte, size)
		for port := uint16(4999); port <= 5004; port++ {
			pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, payload), fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, port, payload))
		}
		for port := uint16(5999); port <= 6003; port++ {
			pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, payload), fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, port, payload))
		}
		for sport := uint16(6999); sport <= 7001; sport++ {
			pkts = append(pkts, fixture.UDP4(c4, s4, sport, 53, payload))
		}
	}
	for ttl := 58; ttl <= 65; ttl++ {
		for src := 0; src <= 5; src++ {
			for _, net := range []int{0, 1} {
				pkt := fixture.UDP4(fmt.Sprintf("10.0.%d.%d", net, src), s4, 1, 53, nil)
				pkt[14+8] = byte(ttl)
				pkts = append(pkts, pkt)
			}
		}
	}
	for i := range 7 {
		for port := uint16(8000); port <= 8002; port++ {
			pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, make([]byte, 100+10*i-28)))
		}
	}
	for pad := 0; pad <= 1000; pad += 10 {
		for port := uint16(9000); port <= 9002; port++ {
			pkts = append(pkts, append(fixture.TCP4SYN(c4, s4, 1, port), make([]byte, pad)...))
		}
	}
	for size := 170; size <= 1000; size += 5 {
		for sport := uint16(9002); sport <= 9005; sport++ {
			pkts = append(pkts, fixture.UDP4(c4, s4, sport, 1, make([]byte, size)))
		}
	}
	oneByOne(t, obj, ref, pkts, 100, l4drop.LoadOptions{},
		l4drop.LoadOptions{Disable: []string{"gt-0", "gt-4", "gt-9", "ge-3", "ttl-1", "five-0", "ten-2", "ten-5", "many-3", "src-0", "src-7", "src-78", "src-79", "len-2", "lt-1", "le-0"}},
		l4drop.LoadOptions{Disable: []string{"gt-1", "gt-5", "gt-6", "ge-0", "ge-2", "ttl-0", "ttl-4", "ten-0", "ten-1", "ten-12", "src-0", "src-2", "src-4", "src-41", "lt-0", "lt-3", "le-2"}})
}
