package build

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/l4drop"

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
