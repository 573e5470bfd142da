package build_test

import (
	"context"
	"fmt"
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
			const rounds = 20
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
		})
	}
}
