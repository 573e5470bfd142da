package l4drop

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

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
					d, err := NewDryRun(obj, LoadOptions{})
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
// with BPF_PROG_TEST_RUN, next to an XDP program that drops everything.
// The runs alternate between the two in rounds, and each reports its
// fastest round: on a shared machine, other work only ever adds time.
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
	// measure runs prog and the drop-all program n times each, in rounds,
	// and returns the fastest round of each.
	measure := func(b *testing.B, prog *ebpf.Program, pkt []byte) (progNs, dropNs float64) {
		b.Helper()
		const rounds = 20
		per := uint32(max(b.N/rounds, 1))
		progNs, dropNs = math.Inf(1), math.Inf(1)
		for range rounds {
			for _, m := range []struct {
				p   *ebpf.Program
				min *float64
			}{{prog, &progNs}, {dropAll, &dropNs}} {
				ns, err := runner.Repeat(m.p, pkt, per)
				if err != nil {
					b.Fatal(err)
				}
				*m.min = min(*m.min, ns)
			}
		}
		return progNs, dropNs
	}
	b.Run("drop-all", func(b *testing.B) {
		_, pkt := benchRules("port", 1)
		ns, _ := measure(b, dropAll, pkt)
		b.ReportMetric(ns, "ns/packet")
	})
	for _, kind := range []string{"dns", "dnswild", "port"} {
		for _, n := range []int{1, 10, 100, 1000} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				text, pkt := benchRules(kind, n)
				obj := buildYAML(b, text)
				d, err := NewDryRun(obj, LoadOptions{})
				if err != nil {
					b.Fatal(err)
				}
				defer d.Close()
				if v, err := d.Run(pkt); err != nil || v.Action != "drop" || v.Rule != uint32(n-1) {
					b.Fatalf("packet: %+v, %v; want dropped by the last rule", v, err)
				}
				// Sampling off, as in production at high rates.
				if err := d.coll.Maps[mapConfig].Put(uint32(0), config{}); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				ns, drop := measure(b, d.prog, pkt)
				b.ReportMetric(ns, "ns/packet")
				b.ReportMetric(ns-drop, "extra-ns")
			})
		}
	}
}
