package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/lab/scenario"
)

// AutoRun is one scenario run against l4drop run --auto.
type AutoRun struct {
	Result scenario.Result
	Err    error
}

// AutoMitigation is the time-to-mitigate table: every scenario, IPv4 and
// IPv6, against auto rules.
type AutoMitigation struct {
	Options scenario.Options
	Runs    []AutoRun
}

// MeasureAuto runs every scenario (lab.Scenarios) in a lab of its own
// with opts in mode auto.
func MeasureAuto(ctx context.Context, opts scenario.Options, logf func(string, ...any)) *AutoMitigation {
	opts = opts.WithDefaults()
	opts.Mode = scenario.ModeAuto
	a := &AutoMitigation{Options: opts}
	for _, sc := range lab.Scenarios() {
		if ctx.Err() != nil {
			break
		}
		res, err := scenario.Run(ctx, sc, opts)
		res.Scenario = sc.Name
		a.Runs = append(a.Runs, AutoRun{Result: res, Err: err})
		if err != nil {
			logf("auto %-26s failed: %v", sc.Name, err)
			continue
		}
		logf("auto %-26s time to mitigate %s, %.2f%% of the attack dropped from then, %d legitimate matched, expired %s after",
			sc.Name, secs(res.TimeToMitigate), res.AttackDroppedPct, res.LegitDropped, secs(res.ExpiredAfter))
	}
	return a
}

func secs(v *float64) string {
	if v == nil {
		return "never"
	}
	return fmt.Sprintf("%.2f s", *v)
}

// Summary returns the median and the largest time to mitigate, the
// smallest share of an attack dropped once mitigated, and the legitimate
// packets auto rules matched, over the runs; ok is false if a run failed
// or never mitigated.
func (a *AutoMitigation) Summary() (median, worst, minDropped float64, legit uint64, ok bool) {
	var ttms []float64
	minDropped = 100
	ok = len(a.Runs) > 0
	for _, r := range a.Runs {
		if r.Err != nil || r.Result.TimeToMitigate == nil {
			ok = false
			continue
		}
		ttms = append(ttms, *r.Result.TimeToMitigate)
		minDropped = min(minDropped, r.Result.AttackDroppedPct)
		legit += r.Result.LegitDropped
	}
	if len(ttms) == 0 {
		return 0, 0, 0, legit, false
	}
	slices.Sort(ttms)
	median = ttms[len(ttms)/2]
	if len(ttms)%2 == 0 {
		median = (ttms[len(ttms)/2-1] + ttms[len(ttms)/2]) / 2
	}
	return median, ttms[len(ttms)-1], minDropped, legit, ok
}

func (a *AutoMitigation) markdown(b *strings.Builder) {
	if a == nil || len(a.Runs) == 0 {
		return
	}
	o := a.Options
	fmt.Fprintf(b, "\n## Auto-mitigation: time to mitigate\n\n`l4lab scenario NAME --mode auto` for every scenario, each in a lab of its own: "+
		"legitimate traffic (%.0f pps target) throughout, answered by servers on the server side; %s of it alone; then an attack "+
		"(%.0f pps target) that shares its destination, protocol and port, for %s; L4Drop's daemon in the process with "+
		"`--auto --auto-threshold %.0f --auto-expire %s`, `sample_rate: %d`. Time to mitigate is from the attack's start to "+
		"the first moment from which a quarter of a second of attack is 99%% dropped (the program's counters, read every 50 ms); "+
		"dropped is the share of the attack dropped from then to its end; legitimate matched counts every legitimate packet sent "+
		"that any auto rule deployed during the run matches (all of them made again offline and judged against every rule); "+
		"expired is from the attack's end to the last rule's removal. Where the kernel refuses live-frames test runs the "+
		"generator sends from a packet socket, hence the modest rates.\n\n",
		o.LegitRate, o.Learn, o.AttackRate, o.Duration, o.Threshold, o.Expire, o.SampleRate)
	if med, worst, dropped, legit, ok := a.Summary(); ok {
		fmt.Fprintf(b, "Over the %d runs: median time to mitigate %.2f s (target ≤ 1.0 s), largest %.2f s (target ≤ 2.0 s), "+
			"at least %.2f%% of each attack dropped once mitigated (target ≥ 99%%), %d legitimate packets matched by an auto rule "+
			"(target 0).\n\n", len(a.Runs), med, worst, dropped, legit)
	}
	fmt.Fprintf(b, "| scenario | attack pps | time to mitigate | dropped from then | legitimate sent / reached the server / matched | rule | expired after |\n"+
		"|---|---:|---:|---:|---:|---|---:|\n")
	for _, r := range a.Runs {
		res := r.Result
		if r.Err != nil {
			fmt.Fprintf(b, "| %s | failed: %s | | | | | |\n", res.Scenario, oneLine(r.Err.Error()))
			continue
		}
		var exprs []string
		for _, rl := range res.Rules {
			if rl.Auto {
				exprs = append(exprs, "`"+rl.Expr+"`")
			}
		}
		fmt.Fprintf(b, "| %s | %.0f | %s | %.2f%% | %d / %d / %d | %s | %s |\n", res.Scenario, res.AttackPPS, secs(res.TimeToMitigate),
			res.AttackDroppedPct, res.LegitSent, res.LegitOK, res.LegitDropped, strings.Join(exprs, "<br>"), secs(res.ExpiredAfter))
	}
}
