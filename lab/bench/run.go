package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/lab/scenario"
)

// RunOptions say what Run measures beyond Config's drop rates.
type RunOptions struct {
	// Config is the drop-rate measurements' setup.
	Config Config
	// Tools are the commands the benchmarks run.
	Tools Tools
	// BuildRules are the rule counts whose build and load times are
	// measured.
	BuildRules []int
	// CBPFCRepeat is the test runs per cbpfc timing (0: no cbpfc rows).
	CBPFCRepeat int
	// HookRuns is the test runs per round of the xdpcap hook cost (0:
	// skip it).
	HookRuns int
	// PacketRuns is the test runs per round of the per-packet rows
	// (MeasurePerPacket; 0: skip them).
	PacketRuns int
	// Capture measures the capture rates, and xdpcap -r against tcpdump -r
	// (DefaultOfflineOptions).
	Capture bool
	// DaemonPPS is the rate through L4Drop for the daemon's cost with
	// --sflow and --auto (0: skip it).
	DaemonPPS int
	// Actions measures actions syncookie and ratelimit on a SYN flood.
	Actions bool
	// AutoDuration is the attack duration of each auto-mitigation
	// scenario (0: skip them).
	AutoDuration time.Duration
	// HeldOutSeed seeds the held-out check of auto mitigation (0: skip
	// it).
	HeldOutSeed uint64
	// Command is the command line the report names.
	Command string
}

// Run runs every benchmark o asks for, in a working directory of its own,
// logging progress and each part's time through logf, and returns the
// report: rows that could not be measured are notes, not errors. It
// returns lab.ErrInterrupted when ctx ends.
func Run(ctx context.Context, o RunOptions, logf func(format string, args ...any)) (*Report, error) {
	cfg, t := o.Config, o.Tools
	var err error
	dir, err := os.MkdirTemp("", "l4lab-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	loadBefore := LoadAverage()
	// Each part says how long it took: the whole run should stay within a
	// few minutes.
	start := time.Now()
	phase := start
	took := func(what string) {
		logf("-- %s took %s (%s so far)", what, time.Since(phase).Round(100*time.Millisecond), time.Since(start).Round(time.Second))
		phase = time.Now()
	}
	rep := &Report{Date: time.Now(), Machine: Machine(), Config: cfg, Command: o.Command}
	t.DNSRules = t.HasDNSRules(dir)
	if !t.DNSRules {
		rep.Notes = append(rep.Notes, "l4drop could not build `dns:` rules here; the rules are equivalent tcpdump expressions on the query name's labels.")
	}

	// Build every rule set first; the build times are a row of their own.
	objs := map[int]string{}
	buildErrs := map[int]error{}
	for _, n := range append(append([]int(nil), cfg.Rules...), o.BuildRules...) {
		if _, ok := objs[n]; ok {
			continue
		}
		if ctx.Err() != nil {
			return nil, lab.ErrInterrupted
		}
		obj, d, err := t.Build(ctx, dir, n)
		if err != nil {
			logf("build %6d rules: %v", n, err)
			buildErrs[n] = err
			if slices.Contains(o.BuildRules, n) {
				rep.BuildLoads = append(rep.BuildLoads, BuildLoad{Rules: n, Err: err})
			}
			continue
		}
		objs[n] = obj
		if slices.Contains(o.BuildRules, n) {
			logf("build %6d rules: %.2fs", n, d.Seconds())
			rep.BuildLoads = append(rep.BuildLoads, BuildLoad{Rules: n, Build: d})
		}
	}
	for i, bl := range rep.BuildLoads {
		if ctx.Err() != nil {
			return nil, lab.ErrInterrupted
		}
		if bl.Err != nil {
			continue
		}
		d, err := MeasureLoad(t, objs[bl.Rules])
		rep.BuildLoads[i].Load, rep.BuildLoads[i].Err = d, err
		logf("load  %6d rules: %.2fs %v", bl.Rules, d.Seconds(), errOrEmpty(err))
	}
	scale := t.MixedBuildLoad(ctx, dir)
	rep.BuildLoads = append(rep.BuildLoads, scale)
	logf("build+load %d rules of mixed shapes: %.2fs %v", scale.Rules, (scale.Build + scale.Load).Seconds(), errOrEmpty(scale.Err))

	if ctx.Err() != nil {
		return nil, lab.ErrInterrupted
	}
	took("build and load")
	if o.CBPFCRepeat > 0 {
		logf("cbpfc over the corpus filters...")
		table, err := CBPFC(o.CBPFCRepeat, func(string, ...any) {})
		if err != nil {
			rep.Notes = append(rep.Notes, "cbpfc rows missing: "+err.Error())
			logf("cbpfc: %v", err)
		}
		rep.CBPFC = table
		took("cbpfc")
	}

	if o.HookRuns > 0 {
		h, err := MeasureHookCost(61, o.HookRuns)
		if err != nil {
			rep.Notes = append(rep.Notes, "xdpcap hook cost missing: "+err.Error())
			logf("xdpcap hook cost: %v", err)
		} else {
			logf("xdpcap hook cost: no hook %.1f ns, empty hook %+.1f ns, filter matching nothing %+.1f ns, empty entry slot %+.1f ns",
				h.NoHook, h.EmptyExtra, h.NoMatchExtra, h.EntryExtra)
			rep.HookCost = &h
		}
		took("xdpcap hook cost")
	}

	if o.PacketRuns > 0 {
		cases, err := PacketCases()
		if err == nil {
			rep.PerPacket, err = t.MeasurePerPacket(ctx, dir, cases, PacketRounds, o.PacketRuns, logf)
		}
		if ctx.Err() != nil {
			return nil, lab.ErrInterrupted
		}
		if err != nil {
			rep.Notes = append(rep.Notes, "per-packet rows missing: "+err.Error())
			logf("per packet: %v", err)
		}
		took("per-packet costs")
	}

	for _, comp := range []string{DaemonSFlow, DaemonAuto} {
		if o.DaemonPPS <= 0 || ctx.Err() != nil {
			break
		}
		c, err := MeasureDaemon(ctx, t, dir, comp, DaemonLoad{PPS: o.DaemonPPS, SampleRate: 64, Duration: 5 * time.Second}, logf)
		if err != nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("daemon cost with %s missing: %v", comp, err))
			logf("daemon cost, %s: %v", comp, err)
			continue
		}
		logf("daemon cost, %s: %d samples, %d lost, %.1f%% of one core", comp, c.Samples, c.Lost(), c.CoreShare()*100)
		rep.Daemon = append(rep.Daemon, c)
	}
	took("daemon cost")

	portObj, _, portErr := t.BuildRules(ctx, dir, "port", PortRuleSet())
	port := t.PortFilter(portObj)
	if portErr != nil {
		logf("build port rule: %v", portErr)
		port.Setup = func(*lab.Lab) (func(), error) { return nil, portErr }
	}
	filters := []Filter{DropAll(), port, Floor(PortRulePort), FloorDNS()}
	// The mixed pass: the ends of L4Drop's series, iptables, and the two
	// rows the ceiling is computed from.
	mixed := []Filter{DropAll()}
	if Have("xdp-filter") {
		filters = append(filters, XDPFilter(PortRulePort, "udp"))
	} else {
		rep.Notes = append(rep.Notes, "xdp-filter (xdp-tools) not installed: its row is missing.")
	}
	for _, n := range cfg.Rules {
		f := t.DropFilter(n, objs[n])
		if err := buildErrs[n]; err != nil {
			f.Setup = func(*lab.Lab) (func(), error) { return nil, err }
		}
		filters = append(filters, f)
		if n == cfg.Rules[0] || n == slices.Max(cfg.Rules) {
			mixed = append(mixed, f)
		}
	}
	if bc, err := t.AttackBytecode(); err == nil && Have("iptables") {
		filters = append(filters, IPTables(bc))
		mixed = append(mixed, IPTables(bc))
	} else {
		rep.Notes = append(rep.Notes, fmt.Sprintf("iptables row missing: %v", errOrEmpty(err)))
	}
	filters = append(filters, NoFilter())
	mixed = append(mixed, NoFilter())
	if rep.Drops, err = MeasureDrops(ctx, cfg, filters, logf); err != nil {
		if ctx.Err() != nil {
			return nil, lab.ErrInterrupted
		}
		return nil, err
	}
	took("drop rates, attack flood alone")
	if cfg.MixedRounds > 0 && len(cfg.Legit) > 0 {
		if rep.Mixed, err = MeasureDrops(ctx, cfg.Mixed(), mixed, logf); err != nil {
			if ctx.Err() != nil {
				return nil, lab.ErrInterrupted
			}
			return nil, err
		}
		took("drop rates with legitimate queries")
	}
	if o.Actions {
		res, err := t.MeasureActions(ctx, cfg, dir, logf)
		if ctx.Err() != nil {
			return nil, lab.ErrInterrupted
		}
		if err != nil {
			res.Drops = []DropRate{{}, {Name: "L4Drop actions", Err: err}}
		}
		rep.Notes = append(rep.Notes, res.Notes()...)
		took("actions on a SYN flood")
	}

	if o.Capture {
		cs := []Capture{t.XDPcapMinimal(dir)}
		if obj, ok := objs[1]; ok {
			cs = append(cs, t.XDPcapL4Drop(obj, dir), t.XDPcapL4DropTestRuns(obj, dir))
		}
		if Have("tcpdump") {
			cs = append(cs, Tcpdump(dir))
		} else {
			rep.Notes = append(rep.Notes, "tcpdump not installed: its capture row is missing.")
		}
		if rep.Captures, err = MeasureCaptures(ctx, cfg, cs, logf); err != nil {
			if ctx.Err() != nil {
				return nil, lab.ErrInterrupted
			}
			return nil, err
		}
		took("capture rates")
		if Have("tcpdump") {
			if rep.Offline, err = t.MeasureOffline(ctx, dir, DefaultOfflineOptions(), logf); err != nil {
				if ctx.Err() != nil {
					return nil, lab.ErrInterrupted
				}
				rep.Notes = append(rep.Notes, "xdpcap -r against tcpdump -r missing: "+err.Error())
			}
			took("xdpcap -r against tcpdump -r")
		}
	}

	if o.AutoDuration > 0 {
		rep.Auto = MeasureAuto(ctx, scenario.Options{Duration: o.AutoDuration}, logf)
		took("auto-mitigation scenarios")
	}
	if o.HeldOutSeed > 0 {
		rep.HeldOut = MeasureHeldOut(ctx, t, filepath.Join(dir, "held-out"), HeldOutOptions{Seed: o.HeldOutSeed}, logf)
		if ctx.Err() != nil {
			return nil, lab.ErrInterrupted
		}
		took("held-out auto check")
	}

	rep.Load = loadBefore + " / " + LoadAverage()
	return rep, nil
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
