package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/lab/scenario"
)

const scenarioUsage = `Usage: l4lab scenario NAME [flags]

Runs one attack scenario in a fresh lab: legitimate traffic throughout,
answered by real servers on the server side; a learning period; the attack,
which shares the legitimate traffic's destination, protocol and port; its
end. The mitigation is L4Drop's daemon in this process: --mode auto finds
the attack in its samples and deploys rules of its own (l4drop run --auto),
rules=FILE loads a rules file, none leaves the server alone. Reports the
time to mitigate (attack start to the first moment from which 99%% of the
attack is dropped), the attack dropped, the legitimate packets sent,
served and dropped, the rules and when they expired.

Where the kernel refuses live-frames test runs, the generator sends from a
packet socket (about ten times slower): the default rates fit that.

Scenarios: %s

Examples:
  l4lab scenario dns-random-subdomain
  l4lab scenario syn-flood-v6 --json
  l4lab scenario udp-payload --mode rules=rules.yaml --attack-rate 30000
  l4lab scenario ntp-reflection --flash-crowd     # six times the users: no rule

Flags:
`

func scenarioCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("scenario", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, scenarioUsage, strings.Join(lab.ScenarioNames(), ", "))
		fs.PrintDefaults()
	}
	var o scenario.Options
	fs.StringVar(&o.Mode, "mode", "auto", "auto, none or rules=FILE")
	fs.Float64Var(&o.AttackRate, "attack-rate", 25000, "attack rate, packets per second")
	fs.Float64Var(&o.LegitRate, "legit-rate", 2500, "legitimate traffic's rate, packets per second")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the packets' random fields")
	fs.DurationVar(&o.Duration, "duration", 0, "the attack's duration (default 10s)")
	fs.DurationVar(&o.Learn, "learn", 0, "legitimate traffic alone before the attack (default 5s)")
	fs.Float64Var(&o.Threshold, "auto-threshold", 10000, "the daemon's --auto-threshold, pps")
	fs.DurationVar(&o.Expire, "auto-expire", 0, "the daemon's --auto-expire (default 5s)")
	sampleRate := fs.Uint("sample-rate", 8, "the rule set's sample_rate in mode auto")
	fs.BoolVar(&o.FlashCrowd, "flash-crowd", false, "instead of the attack, five times more of the legitimate mix")
	fs.StringVar(&o.Allow, "allow", "", "mode auto: a pass rule (pcap-filter expression over the IP packet) in the rules file")
	fs.DurationVar(&o.Restart, "restart", 0, "mode auto: restart the daemon this long after the first auto rule")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	verbose := fs.Bool("v", false, "log the daemon's decisions to stderr")
	if err := parseFlags(fs, reorder(args)); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "l4lab scenario: want one scenario name, got %d arguments\n", fs.NArg())
		return errUsage
	}
	sc, err := lab.LookupScenario(fs.Arg(0))
	if err != nil {
		return err
	}
	if *sampleRate == 0 || *sampleRate > 1<<20 {
		return fmt.Errorf("--sample-rate %d: want 1 to %d", *sampleRate, 1<<20)
	}
	o.SampleRate = uint32(*sampleRate)
	if *verbose {
		o.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	res, err := scenario.Run(context.Background(), sc, o)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printScenario(stdout, res)
	return nil
}

// reorder puts the flags before the scenario name, so both orders work.
func reorder(args []string) []string {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return append(append([]string(nil), args[1:]...), args[0])
	}
	return args
}

func printScenario(w io.Writer, r scenario.Result) {
	opt := func(v *float64) string {
		if v == nil {
			return "never"
		}
		return fmt.Sprintf("%.2f s", *v)
	}
	fmt.Fprintf(w, "%s, mode %s: attack %.0f pps (%d packets)\n", r.Scenario, r.Mode, r.AttackPPS, r.AttackSent)
	fmt.Fprintf(w, "  time to mitigate    %s\n", opt(r.TimeToMitigate))
	fmt.Fprintf(w, "  attack dropped      %.2f%% from then (%d of the whole attack)\n", r.AttackDroppedPct, r.AttackDropped)
	fmt.Fprintf(w, "  legitimate          %d sent, %d reached the server, %d matched by a drop rule\n", r.LegitSent, r.LegitOK, r.LegitDropped)
	fmt.Fprintf(w, "  rules expired       %s after the attack's end\n", opt(r.ExpiredAfter))
	for _, rl := range r.Rules {
		fmt.Fprintf(w, "  %-10s %-7s %9d packets", rl.Name, rl.Action, rl.Packets)
		if rl.Auto {
			fmt.Fprintf(w, "  deployed %s, removed %s after the end, %.2f%% of the attack, %d legitimate\n    %s",
				opt(rl.Deployed), opt(rl.Removed), rl.AttackMatchedPct, rl.LegitMatched, rl.Expr)
		}
		fmt.Fprintln(w)
	}
	if r.PacketSocket {
		fmt.Fprintln(w, "  (the kernel refused live frames: traffic sent from a packet socket)")
	}
}
