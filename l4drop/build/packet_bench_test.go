package build_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
	"github.com/l4drop/l4drop/lab/bench"
)

// BenchmarkPacket measures what a packet costs the rule sets of
// bench.PacketCases (each shape at 1 and 1,000 rules, 10,000 of mixed
// shapes), sampling off as in production at high rates (and one port rule
// with sampling on, as with --auto or --sflow), with BPF_PROG_TEST_RUN next to
// an XDP program that drops everything: the packet matching the last rule
// (every rule before it runs) and a legitimate query no rule matches, in
// 20 rounds, drop-all and the two in turns (bench.TimePackets). Each
// reports its fastest round, in the thread's CPU time per packet
// (sub-nanosecond; the kernel's own figure is whole ns, rounded down):
// on a shared machine, other work only ever adds time. extra-ns is the
// matching packet above drop-all, miss-extra-ns the miss above it, and
// kernel-extra-ns the former by the kernel's figures.
//
//	go test -run '^$' -bench Packet -benchtime 20000000x ./l4drop/build/
func BenchmarkPacket(b *testing.B) {
	fixture.RequireRoot(b)
	cases, err := bench.PacketCases()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/%d/sample-%d", c.Shape, c.Rules, c.SampleRate), func(b *testing.B) {
			timeCase(b, c, 20)
		})
	}
}

// timeCase builds and times case c in rounds (bench.TimePackets) and
// reports its metrics (see BenchmarkPacket).
func timeCase(b *testing.B, c bench.PacketCase, rounds int) {
	b.Helper()
	rs, err := build.ParseRuleSet("packet.yaml", []byte(c.YAML))
	if err != nil {
		b.Fatal(err)
	}
	obj, _, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		b.Fatal(err)
	}
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if err := bench.PreparePacketCase(d, c); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	costs, err := bench.TimePackets(context.Background(), []bench.PacketProgram{{Case: c, Prog: d.Program()}},
		rounds, max(b.N/rounds, 1<<12), nil)
	if err != nil {
		b.Fatal(err)
	}
	pc := costs[0]
	b.ReportMetric(pc.Hit.Min(), "ns/packet")
	b.ReportMetric(pc.HitExtra(), "extra-ns")
	b.ReportMetric(pc.Miss.Min(), "miss-ns/packet")
	b.ReportMetric(pc.MissExtra(), "miss-extra-ns")
	b.ReportMetric(pc.DropAll.Min(), "drop-all-ns")
	b.ReportMetric(pc.Hit.KernelMin()-pc.DropAll.KernelMin(), "kernel-extra-ns")
}

// ruleShapes are the shapes of BenchmarkRuleShapes: rule i of each, in
// tcpdump's language. None matches the benchmark's packets.
var ruleShapes = []struct {
	name string
	expr func(i int) string
}{
	{"port", func(i int) string { return fmt.Sprintf("udp dst port %d", 1000+i) }},
	{"host", func(i int) string { return fmt.Sprintf("src host 10.%d.%d.1", i>>8, i&255) }},
	{"host-either", func(i int) string { return fmt.Sprintf("host 10.%d.%d.1", i>>8, i&255) }},
	{"host-list", func(i int) string {
		return fmt.Sprintf("src host 10.1.%d.%d or src host 10.2.%d.%d", i>>8, i&255, i>>8, i&255)
	}},
	{"port-list", func(i int) string { return fmt.Sprintf("udp dst port %d or udp dst port %d", 1000+i, 3000+i) }},
	{"prefixes", func(i int) string { // 13 lengths, 12 to 24
		a := netip.AddrFrom4([4]byte{10, byte(i * 37), byte(i * 11), byte(i)})
		return "src net " + netip.PrefixFrom(a, 12+i%13).Masked().String()
	}},
	// Hosts and /24 nets in turns: one table, its slots masked.
	{"hosts-and-nets", func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("src host 10.%d.%d.1", i>>8, i&255)
		}
		return fmt.Sprintf("src net 10.%d.%d.0/24", 100+i>>8, i&255)
	}},
	{"portrange-wide", func(i int) string {
		return fmt.Sprintf("udp dst portrange %d-%d", 1000+(i*500)%60000, 1000+(i*500)%60000+499)
	}},
	{"host-and-port", func(i int) string {
		return fmt.Sprintf("src host 10.%d.%d.1 and udp dst port %d", i>>8, i&255, 1000+i%50)
	}},
	{"net-and-port", func(i int) string {
		return fmt.Sprintf("src net 10.%d.%d.0/24 and tcp dst port %d", i>>8, i&255, 1000+i%50)
	}},
	{"ttl-and-port", func(i int) string { return fmt.Sprintf("ip[8] = %d and udp dst port %d", 1+i%200, 1000+i) }},
	{"syn-and-port", func(i int) string { return fmt.Sprintf("tcp[tcpflags] & tcp-syn != 0 and tcp dst port %d", 1000+i) }},
	{"payload", func(i int) string { return fmt.Sprintf("udp dst port 53 and udp[10:4] = %d", 0x10000+i) }},
	{"ip6-net48", func(i int) string { return fmt.Sprintf("src net 2001:db8:%x::/48", i) }},
	{"ip6-host", func(i int) string { return fmt.Sprintf("src host 2001:db8::%x", i+1) }},
	{"port-and-len", func(i int) string { return fmt.Sprintf("udp dst port %d and len > %d", 1000+i%10, 100+i) }},
	{"host-and-ttl", func(i int) string { return fmt.Sprintf("src host 10.%d.%d.1 and ip[8] >= %d", i>>8, i&255, 1+i%200) }},
	{"port-and-len-below", func(i int) string { return fmt.Sprintf("udp dst port %d and len < %d", 1000+i%10, 1500-i) }},
	// Ten falling bounds a port: more than a bucket of 4 holds.
	{"port-and-falling-len", func(i int) string { return fmt.Sprintf("udp dst port %d and len > %d", 1000+i%100, 1500-10*(i/100)) }},
	// A hundred scattered bounds a port, about twenty of them falling.
	{"port-and-scattered-len", func(i int) string { return fmt.Sprintf("udp dst port %d and len > %d", 1000+i%10, 100+i*7919%1000) }},
}

// BenchmarkRuleShapes measures what a packet costs 1,000 rules of each of
// ruleShapes, then a rule the matching packet meets (a DNS query, "udp
// dst port 53"), as BenchmarkPacket does (extra-ns: every rule runs;
// miss-extra-ns: a TCP SYN to port 80 none matches). docs/rules.md has
// the figures.
//
//	go test -run '^$' -bench RuleShapes -benchtime 2000000x ./l4drop/build/
func BenchmarkRuleShapes(b *testing.B) {
	fixture.RequireRoot(b)
	for _, sh := range ruleShapes {
		b.Run(sh.name, func(b *testing.B) {
			timeCase(b, ruleShapeCase(sh.name, 1000, sh.expr), 10)
		})
	}
}

// BenchmarkRandomBounds is BenchmarkRuleShapes for 10,000 rules of ten
// ports, each port's thousand length bounds in random order (about 60 of
// them falling, which take buckets of 64 slots). docs/rules.md has the
// figure.
//
//	go test -run '^$' -bench RandomBounds -benchtime 2000000x ./l4drop/build/
func BenchmarkRandomBounds(b *testing.B) {
	fixture.RequireRoot(b)
	r := rand.New(rand.NewPCG(1, 2))
	var perms [10][]int
	for p := range perms {
		perms[p] = r.Perm(1000)
	}
	c := ruleShapeCase("ten-ports-random-len", 10000, func(i int) string {
		return fmt.Sprintf("udp dst port %d and len > %d", 1000+i%10, 100+perms[i%10][i/10])
	})
	timeCase(b, c, 10)
}

// ruleShapeCase is n rules, rule i expr(i), then "udp dst port 53": a
// DNS query matches the last, a TCP SYN to port 80 none.
func ruleShapeCase(name string, n int, expr func(int) string) bench.PacketCase {
	var y strings.Builder
	y.WriteString("sample_rate: 0\nrules:\n")
	for i := range n {
		fmt.Fprintf(&y, "  - name: r%d\n    expr: %q\n", i, expr(i))
	}
	y.WriteString("  - name: last\n    expr: \"udp dst port 53\"\n")
	return bench.PacketCase{Shape: name, Rules: n + 1, YAML: y.String(),
		Hit:  fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53, fixture.DNSQuery("www.example.org", 1)),
		Miss: fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 80)}
}
