package build

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/l4drop"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
)

// benchRules returns n rules of a kind: "port" (tcpdump expressions, each
// its own compiled matcher), "dns" (exact names) or "dnswild" ("*.zone"
// names; both in the name tables), and a packet that matches the last rule.
func benchRules(kind string, n int) (string, []byte) {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := 0; i < n; i++ {
		switch kind {
		case "port":
			fmt.Fprintf(&b, "  - name: port-%d\n    expr: \"udp dst port %d\"\n", i, 1000+i)
		case "dns":
			fmt.Fprintf(&b, "  - name: dns-%d\n    dns: [\"host%d.attack.example.com\"]\n", i, i)
		case "dnswild":
			fmt.Fprintf(&b, "  - name: zone-%d\n    dns: [\"*.zone%04d.example\"]\n", i, i)
		}
	}
	if kind == "port" {
		return b.String(), fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, uint16(1000+n-1), make([]byte, 18))
	}
	if kind == "dnswild" {
		q := fixture.DNSQuery(fmt.Sprintf("x7f3k2.zone%04d.example", n-1), 1)
		return b.String(), fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, q)
	}
	q := fixture.DNSQuery(fmt.Sprintf("host%d.attack.example.com", n-1), 1)
	return b.String(), fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, q)
}

// BenchmarkBuildLoad measures build (generate + clang) and load (verifier)
// of rule sets of growing size.
func BenchmarkBuildLoad(b *testing.B) {
	fixture.RequireRoot(b)
	for _, kind := range []string{"dns", "dnswild", "port"} {
		for _, n := range []int{1, 100, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				text, _ := benchRules(kind, n)
				rs, err := ParseRuleSet("bench.yaml", []byte(text))
				if err != nil {
					b.Fatal(err)
				}
				var build, load time.Duration
				progs := 0
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					obj, gen, err := Build(rs, BuildOptions{})
					if err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
					if err != nil {
						b.Fatal(err)
					}
					load += time.Since(t1)
					build += t1.Sub(t0)
					d.Close()
					progs = len(gen.Meta.Programs)
				}
				b.ReportMetric(build.Seconds()/float64(b.N), "build-s")
				b.ReportMetric(load.Seconds()/float64(b.N), "load-s")
				b.ReportMetric(float64(progs), "programs")
			})
		}
	}
}

// BenchmarkPacket measures the cost of one packet matching the last rule,
// and of one matching none (miss-ns/packet: the cost of legitimate
// traffic), with BPF_PROG_TEST_RUN, next to an XDP program that drops
// everything. The runs alternate between them in rounds, and each reports
// its fastest round: on a shared machine, other work only ever adds time.
// ns/packet is the rule set's cost, extra-ns how much it adds to the
// drop-all program's.
func BenchmarkPacket(b *testing.B) {
	fixture.RequireRoot(b)
	runner := fixture.NewXDPRunner(b)
	dropAll, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer dropAll.Close()
	type run struct {
		prog *ebpf.Program
		pkt  []byte
	}
	// measure runs each of runs b.N times, in rounds, and returns the
	// fastest round of each.
	measure := func(b *testing.B, runs ...run) []float64 {
		b.Helper()
		const rounds = 20
		per := uint32(max(b.N/rounds, 1))
		best := make([]float64, len(runs))
		for i := range best {
			best[i] = math.Inf(1)
		}
		for range rounds {
			for i, r := range runs {
				ns, err := runner.Repeat(r.prog, r.pkt, per)
				if err != nil {
					b.Fatal(err)
				}
				best[i] = min(best[i], ns)
			}
		}
		return best
	}
	b.Run("drop-all", func(b *testing.B) {
		_, pkt := benchRules("port", 1)
		b.ReportMetric(measure(b, run{dropAll, pkt})[0], "ns/packet")
	})
	for _, kind := range []string{"dns", "dnswild", "port"} {
		for _, n := range []int{1, 10, 100, 1000} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				text, pkt := benchRules(kind, n)
				miss := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, fixture.DNSQuery("www.example.org", 1))
				if kind == "port" {
					miss = fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 999, make([]byte, 18))
				}
				obj := buildYAML(b, text)
				d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
				if err != nil {
					b.Fatal(err)
				}
				defer d.Close()
				if v, err := d.Run(pkt); err != nil || v.Action != "drop" || v.Rule != uint32(n-1) {
					b.Fatalf("packet: %+v, %v; want dropped by the last rule", v, err)
				}
				if v, err := d.Run(miss); err != nil || v.Rule != l4drop.NoRule {
					b.Fatalf("packet: %+v, %v; want no rule", v, err)
				}
				// Sampling off, as in production at high rates.
				if err := d.SetSampleRate(0); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				ns := measure(b, run{d.Program(), pkt}, run{d.Program(), miss}, run{dropAll, pkt})
				b.ReportMetric(ns[0], "ns/packet")
				b.ReportMetric(ns[0]-ns[2], "extra-ns")
				b.ReportMetric(ns[1], "miss-ns/packet")
			})
		}
	}
}
