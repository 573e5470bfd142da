package build_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
	"github.com/l4drop/l4drop/lab/bench"
)

// TestTenThousandMixed builds the 10,000 rules of mixed shapes `make bench`
// times (bench.MixedRuleSet) and loads them with every rule on: each
// program must pass the verifier, and the first packet of a few rules' kinds
// must be judged by them.
func TestTenThousandMixed(t *testing.T) {
	fixture.RequireRoot(t)
	rs, err := build.ParseRuleSet("mixed.yaml", []byte(bench.MixedRuleSet(bench.MixedRules, 1)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	obj, gen, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatalf("%d programs: %v", len(gen.Meta.Programs), err)
	}
	defer d.Close()
	loaded := time.Since(start) - built
	most := 0
	for _, c := range build.VerifierCosts(t, obj) {
		if c.Err != nil {
			t.Fatalf("%s: %v", c.Name, c.Err)
		}
		most = max(most, c.Processed)
	}
	// A DNS rule of the set: its name's query is judged by it (or by an
	// earlier rule of the same name, which MixedRuleSet never makes).
	for i, r := range rs.Rules {
		if len(r.DNS) == 0 || r.DNS[0][0] == '*' {
			continue
		}
		q := fixture.DNSQuery(r.DNS[0], 1)
		v, err := d.Run(fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, q))
		if err != nil {
			t.Fatal(err)
		}
		if v.Rule != uint32(i) {
			t.Errorf("query for %s: judged by rule %d, want %d", r.DNS[0], int32(v.Rule), i)
		}
		break
	}
	t.Logf("%d rules in %d programs, at most %d instructions processed of %d; build %v, load %v (indicative)",
		len(rs.Rules), len(gen.Meta.Programs), most, build.VerifierLimit, built.Round(time.Millisecond), loaded.Round(time.Millisecond))
}

// BenchmarkBuildLoadMixed measures build (generation and clang) and load
// (verifier) of bench.MixedRuleSet, as `make bench` does with the commands.
func BenchmarkBuildLoadMixed(b *testing.B) {
	fixture.RequireRoot(b)
	for _, n := range []int{1000, bench.MixedRules} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			rs, err := build.ParseRuleSet("mixed.yaml", []byte(bench.MixedRuleSet(n, 1)))
			if err != nil {
				b.Fatal(err)
			}
			var built, load time.Duration
			for range b.N {
				t0 := time.Now()
				obj, _, err := build.Build(rs, build.BuildOptions{})
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
				if err != nil {
					b.Fatal(err)
				}
				load += time.Since(t1)
				built += t1.Sub(t0)
				d.Close()
			}
			b.ReportMetric(built.Seconds()/float64(b.N), "build-s")
			b.ReportMetric(load.Seconds()/float64(b.N), "load-s")
		})
	}
}
