package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l4drop/l4drop/lab/bench"
)

const benchUsage = `Usage: l4lab bench [flags]

Measures, side by side in one run:
  - the drop rate of L4Drop with 1 port rule (udp dst port 53) next to
    xdp-filter's same port rule, and with 1, 10, 100 and 1,000 DNS rules
    (the flood matching the last) next to iptables' raw table with the bpf
    match on the flood's rule, all against an XDP program that drops
    everything and against no filter at all, on the attack flood alone
    (every packet matches the rule under test, so every filter does the
    baseline's work);
  - a second, shorter pass with 5% legitimate queries (matching no rule)
    for L4Drop with 1 and 1,000 DNS rules, iptables, drop-all and no filter,
    next to the ceiling any filter that lets them through has on that mix
    (the stack's cost of a packet, from the no-filter row);
  - L4Drop's cost per packet in BPF_PROG_TEST_RUN above drop-all, sampling
    off: each rule shape at 1 and 1,000 rules and 10,000 of mixed shapes,
    a packet matching the last rule and a legitimate query matching none;
  - xdpcap's hook cost in ns per packet (BPF_PROG_TEST_RUN: no hook, empty
    hook, a filter matching nothing, an empty entry slot);
  - xdpcap's capture rate, every packet to a file, on a minimal program's
    hook and on L4Drop's, against tcpdump, and on L4Drop's with test runs
    of its program as the flood (faster than the generator's fallback);
    xdpcap -r against tcpdump -r on a 1M-packet capture and the corpus;
  - l4drop's build and load time; cbpfc over the corpus filters;
  - the time to mitigate of l4drop run --auto over every attack scenario
    (l4lab scenario), IPv4 and IPv6, and the held-out check: ten cases
    it was not tuned on, rule sets judged offline.
Prints a table and writes it, with the machine, kernel, date and command,
to -o, and a plot of drop rate against rule count to -plot. Needs root,
and l4drop and xdpcap next to l4lab or on PATH ('make build');
xdp-filter, iptables, tcpdump and gnuplot for their rows.

Rates are counted per second the flood had its CPU, so that other work on
the machine moves them less; the tables show the wall-clock rates and the
flood's CPU share too. Run it on a quiet machine all the same: test runs
of XDP programs attached nowhere (fuzzers do that) take the kernel's XDP
dispatcher lock for milliseconds and stall the generator.

Examples:
  make bench
  l4lab bench -o docs/benchmarks.md
  l4lab bench -rounds 3 -capture-rounds 1 -rules 1,100 -build-rules 1,100 -o /tmp/bench.md
  l4lab bench -capture=false -cbpfc-repeat 0 -hook-runs 0 -o ''     # drop rates only, printed
  l4lab bench -mixed-rounds 0 -o /tmp/bench.md                         # no pass with legitimate queries
  l4lab bench -auto-d 0 -held-out-seed 0 -o /tmp/bench.md             # no auto-mitigation rows

Flags:
`

func benchCmd(args []string, stdout, stderr io.Writer) error {
	cfg := bench.DefaultConfig()
	var t bench.Tools
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage); fs.PrintDefaults() }
	fs.DurationVar(&cfg.Duration, "d", cfg.Duration, "duration of each drop-rate measurement")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "measure each drop-rate row this often, in turns; the median counts")
	fs.IntVar(&cfg.MixedRounds, "mixed-rounds", cfg.MixedRounds, "rounds of the pass with legitimate queries (0: skip it)")
	fs.DurationVar(&cfg.CaptureDuration, "capture-d", cfg.CaptureDuration, "duration of each capture-rate measurement")
	fs.IntVar(&cfg.CaptureRounds, "capture-rounds", cfg.CaptureRounds, "measure each capture row this often, in turns")
	fs.IntVar(&cfg.CPU, "cpu", cfg.CPU, "CPU the generator (and the receiving NAPI) runs on")
	rules := fs.String("rules", "1,10,100,1000", "rule counts for L4Drop's drop rate")
	buildRules := fs.String("build-rules", "1,100,1000,10000", "rule counts for build and load times")
	fs.DurationVar(&t.BuildTimeout, "build-timeout", 5*time.Minute, "give up on an l4drop build after this long")
	cbpfcRepeat := fs.Int("cbpfc-repeat", 20000, "test runs per cbpfc timing (0: skip the cbpfc rows)")
	hookRuns := fs.Int("hook-runs", 100000, "test runs per round of the xdpcap hook cost (0: skip it)")
	packetRuns := fs.Int("packet-runs", 1<<18, "test runs per round of the per-packet rows (0: skip them)")
	captures := fs.Bool("capture", true, "measure the capture rates")
	daemonPPS := fs.Int("daemon-pps", 1000000, "packets a second through L4Drop for the daemon's cost with --sflow and --auto (0: skip it)")
	actions := fs.Bool("actions", true, "measure actions syncookie and ratelimit against drop-all on a SYN flood")
	autoD := fs.Duration("auto-d", 5*time.Second, "attack duration of each auto-mitigation scenario (0: skip them)")
	heldOut := fs.Uint64("held-out-seed", 1, "seed of the held-out auto-mitigation check (0: skip it)")
	out := fs.String("o", "docs/benchmarks.md", "write the table here (empty: print only)")
	plot := fs.String("plot", "", "write the plot here (default: benchmarks.png next to -o)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.Rules, err = intList(*rules); err != nil {
		return err
	}
	buildCounts, err := intList(*buildRules)
	if err != nil {
		return err
	}
	if *plot == "" && *out != "" {
		*plot = filepath.Join(filepath.Dir(*out), "benchmarks.png")
	}
	for _, p := range []string{*out, *plot} {
		if p != "" {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }

	if t.L4Drop, err = findBinary("l4drop"); err != nil {
		return err
	}
	if t.XDPcap, err = findBinary("xdpcap"); err != nil {
		return err
	}
	t.BPFgen, _ = findBinary("bpfgen")
	command := "l4lab bench " + strings.Join(args, " ")
	if len(args) == 0 {
		command = "make bench"
	}
	rep, err := bench.Run(ctx, bench.RunOptions{Config: cfg, Tools: t, BuildRules: buildCounts, CBPFCRepeat: *cbpfcRepeat,
		HookRuns: *hookRuns, PacketRuns: *packetRuns, Capture: *captures, DaemonPPS: *daemonPPS, Actions: *actions, AutoDuration: *autoD,
		HeldOutSeed: *heldOut, Command: command}, logf)
	if err != nil {
		return err
	}
	plotRef := ""
	if *plot != "" {
		if err := rep.Plot(*plot); err != nil {
			rep.Notes = append(rep.Notes, "no plot: "+err.Error())
			logf("no plot: %v", err)
		} else if *out != "" {
			plotRef, _ = filepath.Rel(filepath.Dir(*out), *plot)
		}
	}
	md := rep.Markdown(plotRef)
	fmt.Fprint(stdout, md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			return err
		}
		logf("wrote %s", *out)
	}
	return nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad rule count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}
