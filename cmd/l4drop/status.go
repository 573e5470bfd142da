package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/l4drop/l4drop/l4drop"
)

func cmdStatus(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status --iface IF [--json]", stderr)
	ifl := addIface(fs)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	interval := fs.Duration("interval", time.Second, "measure rates over this long (0: no rates)")
	if _, err := parse(fs, args, 0, "l4drop status --iface eth0 --json"); err != nil {
		return err
	}
	if *interval < 0 {
		return fmt.Errorf("--interval %v: want 0 or more", *interval)
	}
	h, err := ifl.open()
	if err != nil {
		return err
	}
	defer h.Close()
	st, err := h.Status(*interval)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st *l4drop.Status) {
	rate := "off"
	if st.SampleRate > 0 {
		rate = fmt.Sprintf("1/%d", st.SampleRate)
	}
	fmt.Fprintf(w, "%s: location %q, %d program(s), loaded %s, sample rate %s, samples %d, lost %d\n",
		st.Iface, st.Location, st.Programs, st.LoadedAt.Format(time.RFC3339), rate, st.Samples, st.Lost)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rule\taction\tenabled\tpackets\tbytes\tpps\tbps\t")
	for _, r := range append(st.Rules, st.Unmatched) {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%.0f\t%.0f\t\n", r.Name, r.Action, r.Enabled, r.Packets, r.Bytes, r.PPS, r.BPS*8)
	}
	for _, a := range st.Auto {
		fmt.Fprintf(tw, "auto-%d\t%s\tsince %s\t%d\t%d\t%.0f\t%.0f\t\n", a.Slot, a.State, a.Since.Format(time.RFC3339), a.Packets, a.Bytes, a.PPS, a.BPS*8)
	}
	tw.Flush()
	for _, a := range st.Auto {
		fmt.Fprintf(w, "auto-%d: %s\n", a.Slot, a.Expr)
	}
	printActions(w, st)
}

// printActions prints the action counters of the actions the rule set uses,
// and any other that counted something.
func printActions(w io.Writer, st *l4drop.Status) {
	if st.Actions == nil {
		return
	}
	used := map[string]bool{}
	for _, r := range st.Rules {
		used[r.Action] = true
	}
	var parts []string
	for _, name := range l4drop.ActionCounterNames {
		show := st.Actions[name] > 0 ||
			strings.HasPrefix(name, "syncookie_") && used["syncookie"] ||
			name == "ratelimited" && used["ratelimit"] || name == "monitored" && used["monitor"]
		if show {
			parts = append(parts, fmt.Sprintf("%s %d", name, st.Actions[name]))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(w, "actions: %s\n", strings.Join(parts, ", "))
	}
}

func cmdSamples(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("samples --iface IF -w OUT.pcapng|-", stderr)
	ifl := addIface(fs)
	out := fs.String("w", "", "pcapng output file, - for stdout")
	count := fs.Int("count", 0, "stop after this many samples (0: until interrupted)")
	var rate rateFlag
	fs.Var(&rate, "rate", "set the sample rate first (one in N; 0 off), without reloading")
	sflowTo := fs.String("sflow", "", "send the samples as sFlow v5 to HOST:PORT[,HOST:PORT...] instead of -w")
	sflowAgent := fs.String("sflow-agent", "", "sFlow agent address (default: the interface's first IPv4 address)")
	if _, err := parse(fs, args, 0, "l4drop samples --iface eth0 -w - | tcpdump -nr -"); err != nil {
		return err
	}
	if *count < 0 {
		return fmt.Errorf("--count %d: want 0 (no limit) or more", *count)
	}
	if *out != "" && *sflowTo != "" {
		return errors.New("-w and --sflow: give one")
	}
	if *out == "" && *sflowTo == "" && !rate.set {
		return errors.New("-w FILE, -w - or --sflow HOST:PORT is required")
	}
	h, err := ifl.open()
	if err != nil {
		return err
	}
	defer h.Close()
	if rate.set {
		if err := h.SetSampleRate(rate.rate); err != nil {
			return err
		}
		if *out == "" && *sflowTo == "" {
			fmt.Fprintf(stderr, "sample rate set to 1/%d\n", rate.rate)
			return nil
		}
	}
	if *sflowTo != "" {
		return exportSamples(ctx, h, ifl, *sflowTo, *sflowAgent, *count, stderr)
	}
	w := stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return fmt.Errorf("-w: %w", err)
		}
		defer f.Close()
		w = f
	}
	n, err := h.WriteSamples(ctx, w, *count)
	fmt.Fprintf(stderr, "%d samples\n", n)
	return err
}
