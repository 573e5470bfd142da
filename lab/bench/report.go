package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// BuildLoad is the time l4drop took to build and to load a rule set.
type BuildLoad struct {
	Rules       int
	Shapes      string // what the rules are; "" for the DNS series
	Build, Load time.Duration
	Err         error
}

// Report is everything one run measured.
type Report struct {
	Date             time.Time
	Machine, Command string
	// Load is the load average before and after the run: other work on the
	// machine shows in every row.
	Load   string
	Config Config
	Drops  []DropRate // the attack flood alone; the first is the baseline
	// Mixed is the pass with legitimate traffic added (Config.Legit); the
	// first is the baseline. Empty: not measured.
	Mixed    []DropRate
	Captures []CaptureRate
	// HookCost is xdpcap's hook cost; nil if not measured.
	HookCost   *HookCost
	BuildLoads []BuildLoad
	// Daemon is the cost of `l4drop run` with its components (sFlow
	// export, auto mitigation) under a flood.
	Daemon []DaemonCost
	// CBPFC is cbpfc's corpus table, as its benchmark prints it.
	CBPFC string
	// Offline is xdpcap -r against tcpdump -r; nil if not measured.
	Offline *Offline
	// Auto is the time-to-mitigate table; nil if not measured.
	Auto *AutoMitigation
	// HeldOut is the held-out check of auto mitigation; nil if not
	// measured.
	HeldOut *HeldOutResult
	Notes   []string
	// PerPacket is L4Drop's cost per packet in test runs; nil if not
	// measured.
	PerPacket *PerPacket
}

// row returns the first measured drop-rate row of the attack-only pass of
// kind k (and rules n, for KindL4Drop).
func (r *Report) row(k Kind, n int) (DropRate, bool) { return findRow(r.Drops, k, n) }

func findRow(rows []DropRate, k Kind, n int) (DropRate, bool) {
	for _, d := range rows {
		if d.Kind == k && d.Err == nil && (k != KindL4Drop || d.Rules == n) {
			return d, true
		}
	}
	return DropRate{}, false
}

// ceiling is the mixed pass's Ceiling, from its baseline and no-filter
// rows.
func (r *Report) ceiling() (DropRate, float64, bool) {
	base, ok1 := findRow(r.Mixed, KindBaseline, 0)
	stack, ok2 := findRow(r.Mixed, KindNoFilter, 0)
	share, err := r.Config.LegitShare()
	if !ok1 || !ok2 || err != nil || share <= 0 {
		return DropRate{}, 0, false
	}
	c := Ceiling(base, stack, share)
	return c, share, c.CeilingRate() > 0
}

// Markdown renders the report as docs/benchmarks.md.
func (r *Report) Markdown(plot string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Measured by `%s` on %s.\n\n", r.Command, r.Date.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Machine: %s. Load average before and after: %s.\n\n", r.Machine, r.Load)
	fmt.Fprintf(&b, "Every row below was measured in the same run. Each row gets a lab of its own (two network "+
		"namespaces joined by a veth pair). The generator (`l4lab gen`: BPF_PROG_TEST_RUN in live-frames mode, redirecting "+
		"into the veth) floods the server side from CPU %d with the attack alone, %s: every packet matches the rule under "+
		"test, so every filter does the same work as the baseline, an XDP program that drops everything. The filter under "+
		"test runs on the server's veth. "+
		"The receiving veth's NAPI runs on the sender's CPU, so the rate the server takes in is what the filter leaves of "+
		"that CPU: a cheaper filter takes in more. Drop-rate rows are set up once and flooded for %s each (after 200 ms "+
		"of warm-up), %d rounds, in turns; the tables show each row's median run, and as ratios the median over the rounds "+
		"of the ratio between two rows in the same round, which cancels most of the drift of the machine's other work, "+
		"with the quartiles of those ratios in parentheses: how much the machine's other work moved them.",
		r.Config.CPU, strings.Join(quote(attackOnly(r.Config.Traffic)), " + "), r.Config.Duration, r.Config.Rounds)
	b.WriteString(" Where the kernel refuses live-frames test runs (they need CAP_SYS_RESOURCE, which some sandboxes withhold), " +
		"the generator makes the same frames with test runs and sends them from a packet socket, about ten times slower: " +
		"then the generator's own cost is most of every row's and the ratios between rows come out near 1; the rows measured " +
		"in BPF_PROG_TEST_RUN (hook cost, per-source cost, the daemon's cost) show the programs' costs alone.")
	if len(r.Mixed) > 0 {
		fmt.Fprintf(&b, " A second pass, %d rounds, adds legitimate queries that no rule matches (%s) and compares with "+
			"the best any correct filter can do on that mix.", r.Config.MixedRounds, strings.Join(quote(r.Config.Legit), " + "))
	}
	b.WriteString("\n\n")
	r.targets(&b)
	r.drops(&b, plot)
	r.mixed(&b)
	r.hookCost(&b)
	r.PerPacket.markdown(&b)
	r.captures(&b)
	r.Offline.markdown(&b)
	r.Auto.markdown(&b)
	r.heldOut(&b)
	if len(r.BuildLoads) > 0 {
		fmt.Fprintf(&b, "\n## Build and load\n\n`l4drop build` (C generation and clang) and `l4drop load` (verifier, attach, pins), wall time of the commands.\n\n"+
			"| rules | build | load |\n|---:|---:|---:|\n")
		for _, bl := range r.BuildLoads {
			if bl.Err != nil {
				fmt.Fprintf(&b, "| %d %s | failed: %s | |\n", bl.Rules, bl.Shapes, oneLine(bl.Err.Error()))
				continue
			}
			fmt.Fprintf(&b, "| %d %s | %.2f s | %.2f s |\n", bl.Rules, bl.Shapes, bl.Build.Seconds(), bl.Load.Seconds())
		}
	}
	r.daemon(&b)
	if r.CBPFC != "" {
		fmt.Fprintf(&b, "\n## cbpfc over the corpus filters\n\n```text\n%s\n```\n", strings.TrimSpace(r.CBPFC))
		b.WriteString("\n" + cbpfcNote + "\n")
	}
	if len(r.Notes) > 0 {
		fmt.Fprintf(&b, "\n## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// cbpfcNote says how the cbpfc table is measured and what it is compared
// with: the reference compiler's figures are fixed facts, it does not run
// here.
const cbpfcNote = "Measured by internal/corpusbench (also alone: `go test -count=1 -run '^$' -bench Corpus -benchtime 1x ./internal/corpusbench`; " +
	"the eBPF backend against the C backend filter by filter: `go test -count=1 -run TestCompare -v ./internal/corpusbench`). " +
	"Instructions are those of a minimal XDP program around each filter (match: XDP_PASS, else XDP_DROP); " +
	"\"verifier processed\" is the kernel verifier's processed-instruction count on loading it; " +
	"\"reference's filters\" leaves out the 4 filters the best existing cBPF-to-eBPF compiler refuses (3 protochain loops, 1 `type`). " +
	"Timing: the empty program and each filter's two programs stay attached together and run in turns on one CPU, " +
	"15 rounds of BPF_PROG_TEST_RUN, wall-clocked; each figure is a filter's median over the rounds of (program - empty), " +
	"summarised over the filters as median/mean, and \"ebpf - c\" pairs the two backends filter by filter.\n\n" +
	"Against that reference compiler, measured on this machine over the libpcap test-suite filters (a superset of the corpus: " +
	"median 29 instructions, 31,277 processed over 528 filters, i.e. 59 a filter; +2.75 ns a packet): " +
	"cbpfc's median is 17 instructions (41% fewer); it processes about 33 instructions a filter on the filters both accept " +
	"(about 55% of the reference's, short of the half aimed at) and 43 with the protochain loops it alone compiles; " +
	"and it costs what clang's build of the C backend costs, to within a few hundredths of a ns."

// targets prints the figures the project's targets are stated in.
func (r *Report) targets(b *strings.Builder) {
	type line struct{ what, measured, target string }
	var lines []line
	base, haveBase := r.row(KindBaseline, 0)
	ipt, haveIPT := r.row(KindIPTables, 0)
	// The floor (floorC, by hand) says what any filter that counts per
	// rule reaches in this run: how fast the machine runs moves it.
	var floor []string
	if f, ok := r.row(KindFloor, 0); ok && haveBase {
		floor = []string{fmt.Sprintf("the port rule by hand, this run: %s", f.RatiosTo(base).format(2, ""))}
	}
	if port, ok := r.row(KindL4DropPort, 0); ok && haveBase {
		refs := slices.Clip(floor)
		if xf, ok := r.row(KindXDPFilter, 0); ok {
			refs = append(refs, fmt.Sprintf("xdp-filter's port rule: %.2f", xf.RatioTo(base)))
		}
		lines = append(lines, line{"L4Drop, 1 port rule, vs XDP drop-all", port.RatiosTo(base).format(2, ""), "≥ 0.95" + parenthesized(refs)})
	}
	var maxRules int
	for _, d := range r.Drops {
		if d.Kind == KindL4Drop && d.Err == nil {
			maxRules = max(maxRules, d.Rules)
		}
	}
	if d, ok := r.row(KindL4Drop, maxRules); ok && maxRules > 1 && haveBase {
		refs := slices.Clip(floor)
		if f, ok := r.row(KindFloorDNS, 0); ok {
			refs = append(refs, fmt.Sprintf("the flood's wildcard rule by hand: %s", f.RatiosTo(base).format(2, "")))
		}
		lines = append(lines, line{fmt.Sprintf("L4Drop, %d DNS rules, vs XDP drop-all", maxRules), d.RatiosTo(base).format(2, ""), "≥ 0.95" + parenthesized(refs)})
	}
	if haveIPT {
		ns := []int{1}
		if maxRules > 1 {
			ns = append(ns, maxRules)
		}
		// No filter can beat drop-all: what it reaches against iptables
		// bounds every row's ratio in this run.
		target := "≥ 4×"
		if haveBase {
			target += fmt.Sprintf(" (XDP drop-all itself, this run: %s)", base.RatiosTo(ipt).format(1, "×"))
		}
		for _, n := range ns {
			if d, ok := r.row(KindL4Drop, n); ok {
				lines = append(lines, line{fmt.Sprintf("L4Drop, %d DNS rule%s, vs iptables -m bpf (1 rule, same bytecode)", n, plural(n)),
					d.RatiosTo(ipt).format(1, "×"), target})
			}
		}
	}
	if h := r.HookCost; h != nil {
		lines = append(lines, line{"xdpcap, empty hook, ns/packet above the same program without it", fmt.Sprintf("%.1f ns", h.EmptyExtra), "≤ 2 ns"})
		lines = append(lines, line{"xdpcap, filter matching nothing, ns/packet above no hook", fmt.Sprintf("%.1f ns", h.NoMatchExtra), "close to the empty hook"})
		lines = append(lines, line{"xdpcap, empty entry slot, ns/packet above the empty hook", fmt.Sprintf("%.1f ns", h.EntryExtra), "≤ 2 ns"})
	}
	for _, c := range r.Daemon {
		lines = append(lines, line{fmt.Sprintf("`l4drop run %s`, %.2f Mpps, sample_rate %d: daemon CPU, samples lost", strings.Join(c.shownArgs(), " "), c.PPS/1e6, c.SampleRate),
			fmt.Sprintf("%.1f %% of one core, %d lost", c.CoreShare()*100, c.Lost()), "< 20 %, 0 lost"})
	}
	if h := r.HeldOut; h != nil && len(h.Runs) > 0 {
		med, worst, fails := h.Summary()
		lines = append(lines, line{fmt.Sprintf("held-out auto check, %d case%s at %d pps: median / largest time to mitigate, goals missed", len(h.Runs), plural(len(h.Runs)), h.Options.AttackPPS),
			fmt.Sprintf("%.2f s / %.2f s, %d missed", med, worst, len(fails)), "≤ 1.0 s / ≤ 2.0 s, 0 missed"})
	}
	if tcpdump, ok := r.tcpdump(); ok {
		for _, c := range r.Captures {
			if c.Err == nil && strings.HasPrefix(c.Name, "xdpcap") {
				what, target := c.Name+", vs tcpdump", "≥ 4×, 0 lost, in every round"
				if c.OwnFlood {
					what, target = c.Name, "0 lost, in every round"
				}
				lines = append(lines, line{what, captureVsTarget(c, tcpdump), target})
			}
		}
	}
	for _, l := range r.Offline.targets() {
		lines = append(lines, line{l[0], l[1], l[2]})
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(b, "## Against the targets\n\nThe drop-rate figures are of the attack flood alone (%s), every packet matching the rule "+
		"under test, as the targets' reference figures were measured; with legitimate queries added, see the drop rate with "+
		"legitimate queries below.\n\n| figure | measured | target |\n|---|---:|---|\n", strings.Join(quote(attackOnly(r.Config.Traffic)), " + "))
	for _, l := range lines {
		fmt.Fprintf(b, "| %s | %s | %s |\n", l.what, l.measured, l.target)
	}
	fmt.Fprintln(b)
}

// parenthesized is refs, joined, in parentheses after a space, or "".
func parenthesized(refs []string) string {
	if len(refs) == 0 {
		return ""
	}
	return " (" + strings.Join(refs, "; ") + ")"
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func (r *Report) drops(b *strings.Builder, plot string) {
	if len(r.Drops) == 0 {
		return
	}
	fmt.Fprintf(b, "## Drop rate\n\nThe flood: %s alone. The DNS rules match the first question name (`%s` for the flood's rule, "+
		"`*.zoneNNNN.example` for the others, which nothing matches); the port rule and xdp-filter's match every packet of the "+
		"flood as well, and so do the rows for reference: floorC's port rule and DNS wildcard rule by hand (lab/bench/floor.go, "+
		"as in the per-packet section), for port 53 and for `%s`. What they reach is what any filter that reads the headers, or "+
		"the first question name, and counts per rule can reach in this run.\n\n", strings.Join(quote(attackOnly(r.Config.Traffic)), " + "), attackPattern, attackPattern)
	fmt.Fprintf(b, "Mpps per CPU-second is what the server took in per second the flood had its CPU (the sending thread, with the "+
		"receiving NAPI run in its context, and the CPU's ksoftirqd): the inverse of what a packet costs the generator and the "+
		"filter together, whatever else the machine ran meanwhile. The ratios are of that figure. Mpps per second of wall "+
		"time and the share of it the flood had the CPU are there to show how busy the machine was.\n\n")
	dropTable(b, r.Drops, nil)
	if plot != "" {
		fmt.Fprintf(b, "\n![drop rate against rule count, attack flood alone](%s)\n", plot)
	}
}

// mixed prints the pass with legitimate traffic and its ceiling.
func (r *Report) mixed(b *strings.Builder) {
	if len(r.Mixed) == 0 {
		return
	}
	c, share, haveCeiling := r.ceiling()
	if !haveCeiling {
		share, _ = r.Config.LegitShare()
	}
	fmt.Fprintf(b, "\n## Drop rate with %.0f%% legitimate queries\n\nThe issue's mix, in a second pass of %d rounds measured as above: "+
		"the flood (%s) with legitimate queries (%s, %.0f%% of the packets) that no rule matches. Drop-all drops them too: it "+
		"stays as the unit, not as a correct filter. L4Drop and iptables drop the flood and let the legitimate queries on to "+
		"the stack (no server listens in the benchmark's lab, so the stack drops them after doing its work). That the "+
		"legitimate queries reach the server with L4Drop in place is asserted elsewhere: by l4drop's tests (TestLive counts "+
		"every legitimate datagram at the server's socket) and by `make demo`.\n\n",
		100*share, r.Config.MixedRounds, strings.Join(quote(r.Config.Traffic), " + "), strings.Join(quote(r.Config.Legit), " + "), 100*share)
	if haveCeiling {
		base, _ := findRow(r.Mixed, KindBaseline, 0)
		stack, _ := findRow(r.Mixed, KindNoFilter, 0)
		fmt.Fprintf(b, "A filter that lets the legitimate queries through must hand them to the stack, which costs a packet what it "+
			"costs with no filter (%.0f ns per CPU here, against %.0f ns for drop-all: the inverse of the two rows' rates). So the "+
			"best any correct filter can do on this mix is 1/(%.2f × %.0f ns + %.2f × %.0f ns), the ceiling row, computed round by "+
			"round from this pass's drop-all and no-filter rows: %s of drop-all",
			1000/stack.CPUMpps(), 1000/base.CPUMpps(), 1-share, 1000/base.CPUMpps(), share, 1000/stack.CPUMpps(),
			c.RatiosTo(r.Mixed[0]).format(2, ""))
		if ipt, ok := findRow(r.Mixed, KindIPTables, 0); ok {
			fmt.Fprintf(b, " and %s iptables", c.RatiosTo(ipt).format(1, "×"))
		}
		b.WriteString(".")
		var reach []string
		for _, d := range r.Mixed {
			if d.Kind == KindL4Drop && d.Err == nil {
				reach = append(reach, fmt.Sprintf("%s of it with %d DNS rule%s", d.RatiosTo(c).format(2, ""), d.Rules, plural(d.Rules)))
			}
		}
		if len(reach) > 0 {
			fmt.Fprintf(b, " L4Drop reaches %s.", strings.Join(reach, ", "))
		}
		b.WriteString("\n\n")
		dropTable(b, r.Mixed, &c)
		return
	}
	dropTable(b, r.Mixed, nil)
}

// dropTable prints rows, the first the baseline, with ceiling (if any)
// after the baseline and a column of ratios to it.
func dropTable(b *strings.Builder, rows []DropRate, ceiling *DropRate) {
	ipt, haveIPT := findRow(rows, KindIPTables, 0)
	ceilCol, ceilSep := "", ""
	if ceiling != nil {
		ceilCol, ceilSep = " vs the ceiling |", "---:|"
	}
	fmt.Fprintf(b, "| filter on the server's veth | Mpps per CPU-second | vs XDP drop-all | vs iptables |%s Mpps (wall) | CPU share | packets sent |\n"+
		"|---|---:|---:|---:|%s---:|---:|---:|\n", ceilCol, ceilSep)
	for i, d := range rows {
		if ceiling != nil && i == 1 {
			vsIPT := ""
			if haveIPT {
				vsIPT = ceiling.RatiosTo(ipt).format(1, "×")
			}
			fmt.Fprintf(b, "| %s (computed) | %.3f | %s | %s | 1.00 | | | |\n", ceiling.Name, ceiling.CeilingRate(),
				ceiling.RatiosTo(rows[0]).format(2, ""), vsIPT)
		}
		if d.Err != nil {
			fmt.Fprintf(b, "| %s | failed: %s | | |%s | | |\n", d.Name, oneLine(d.Err.Error()), strings.Repeat(" |", len(ceilSep)/5))
			continue
		}
		vsIPT := ""
		if haveIPT && (d.Kind == KindL4Drop || d.Kind == KindL4DropPort) {
			vsIPT = d.RatiosTo(ipt).format(1, "×")
		}
		vsBase := fmt.Sprintf("%.2f", d.ratio(rows[0].CPUMpps()))
		if rs := d.RatiosTo(rows[0]); rs.Rounds > 0 && d.Kind != KindBaseline {
			vsBase = rs.format(2, "")
		}
		vsCeil := ""
		if ceiling != nil {
			vsCeil = " " + d.RatiosTo(*ceiling).format(2, "") + " |"
		}
		share := ""
		if d.OnCPU > 0 && d.Elapsed > 0 {
			share = fmt.Sprintf("%.0f%%", 100*d.OnCPU.Seconds()/d.Elapsed.Seconds())
		}
		fmt.Fprintf(b, "| %s | %.3f | %s | %s |%s %.3f | %s | %d |\n", d.Name, d.CPUMpps(), vsBase, vsIPT, vsCeil, d.Mpps(), share, d.Sent)
	}
}

func (r *Report) hookCost(b *strings.Builder) {
	h := r.HookCost
	if h == nil {
		return
	}
	fmt.Fprintf(b, "\n## xdpcap hook cost\n\nBPF_PROG_TEST_RUN of the smallest instrumented program (drops every packet through "+
		"xdpcap's exit: a tail call into the hook's XDP_DROP slot) over a 60-byte UDP frame, %d rounds of %d runs, "+
		"the four variants in turns, each kept attached. The kernel reports whole ns per round: figures are means over the rounds "+
		"without the fastest and slowest fifth, the extra cost the same of the per-round differences.\n\n",
		h.Rounds, h.PerRound)
	fmt.Fprintf(b, "| program | ns/packet | above no hook | quartiles of the rounds |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(b, "| drop, no hook (return XDP_DROP) | %.1f | | |\n", h.NoHook)
	fmt.Fprintf(b, "| drop through an empty xdpcap hook | %.1f | %+.1f | %+.0f to %+.0f |\n", h.EmptyHook, h.EmptyExtra, h.EmptySpread[0], h.EmptySpread[1])
	fmt.Fprintf(b, "| drop, xdpcap attached with a filter matching nothing (`%s`) | %.1f | %+.1f | %+.0f to %+.0f |\n",
		h.Filter, h.NoMatch, h.NoMatchExtra, h.NoMatchSpread[0], h.NoMatchSpread[1])
	fmt.Fprintf(b, "| drop through an empty hook, starting with xdpcap_entry (empty entry slot) | %.1f | %+.1f | |\n", h.EmptyEntry, h.EmptyEntry-h.NoHook)
	fmt.Fprintf(b, "| the empty entry slot alone: the row above against the empty hook's | | %+.1f | %+.0f to %+.0f |\n", h.EntryExtra, h.EntrySpread[0], h.EntrySpread[1])
}

func (r *Report) tcpdump() (CaptureRate, bool) {
	for _, c := range r.Captures {
		if c.Err == nil && strings.HasPrefix(c.Name, "tcpdump") && c.CPUMpps() > 0 {
			return c, true
		}
	}
	return CaptureRate{}, false
}

func (r *Report) captures(b *strings.Builder) {
	if len(r.Captures) == 0 {
		return
	}
	fmt.Fprintf(b, "\n## Capture rate\n\nThe same flood at full speed for %s, every packet captured to a file, each row %d times in turns, "+
		"a fresh lab each time; the median run by rate captured per CPU-second of the flood (as above: the XDP program and "+
		"its capture, or the stack's path for tcpdump, run on the flood's CPU), and the median of the per-round ratios "+
		"to tcpdump. The capture commands run on the CPUs the flood leaves free; a reader that cannot keep up shows in lost. "+
		"Seen: packets the capture's filter received; lost: seen but not recorded (buffer full).\n\n"+
		"| capture | Mpps captured per CPU-second | lost | vs tcpdump | Mpps captured (wall) | CPU share | seen | packets sent |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
		r.Config.CaptureDuration, r.Config.CaptureRounds)
	tcpdump, haveTcpdump := r.tcpdump()
	for _, c := range r.Captures {
		if c.Err != nil {
			fmt.Fprintf(b, "| %s | failed: %s | | | | | | |\n", c.Name, oneLine(c.Err.Error()))
			continue
		}
		ratio := ""
		switch {
		case haveTcpdump && c.Name == tcpdump.Name:
			ratio = "1.0×"
		case haveTcpdump && !c.OwnFlood:
			ratio = c.RatiosTo(tcpdump).format(1, "×")
		}
		share := ""
		if c.OnCPU > 0 && c.Elapsed > 0 {
			share = fmt.Sprintf("%.0f%%", 100*c.OnCPU.Seconds()/c.Elapsed.Seconds())
		}
		fmt.Fprintf(b, "| %s | %.3f | %d (%.2f%%) | %s | %.3f | %s | %d | %d |\n", c.Name, c.CPUMpps(), c.Lost, c.LostPct(), ratio, c.Mpps(), share, c.Seen, c.Sent)
	}
}

func (d DropRate) ratio(base float64) float64 {
	if d.Ratio > 0 {
		return d.Ratio
	}
	if base > 0 {
		return d.CPUMpps() / base
	}
	return 0
}

// attackOnly shows the attack templates as the attack-only pass runs them:
// a single template's weight (its share of the mixed pass) means nothing
// there.
func attackOnly(specs []string) []string {
	if len(specs) != 1 {
		return specs
	}
	var keep []string
	for _, f := range strings.Split(specs[0], ",") {
		if !strings.HasPrefix(f, "weight=") {
			keep = append(keep, f)
		}
	}
	return []string{strings.Join(keep, ",")}
}

func quote(v []string) []string {
	out := make([]string, len(v))
	for i, s := range v {
		out[i] = "`" + s + "`"
	}
	return out
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}

// Plot draws the drop rate against the rule count with gnuplot: L4Drop's
// rows as a curve, the others as horizontal lines.
func (r *Report) Plot(png string) error {
	if !Have("gnuplot") {
		return fmt.Errorf("gnuplot not installed (Debian: gnuplot-nox)")
	}
	dir, err := os.MkdirTemp("", "l4lab-plot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var data strings.Builder
	maxRules := 1
	for _, d := range r.Drops {
		if d.Kind == KindL4Drop && d.Err == nil {
			fmt.Fprintf(&data, "%d %.4f\n", d.Rules, d.CPUMpps())
			maxRules = max(maxRules, d.Rules)
		}
	}
	dataFile := filepath.Join(dir, "l4drop.dat")
	if err := os.WriteFile(dataFile, []byte(data.String()), 0o644); err != nil {
		return err
	}
	var s strings.Builder
	fmt.Fprintf(&s, "set terminal png size 800,600\nset output %q\n", png)
	fmt.Fprintf(&s, "set title 'Drop rate on a veth, one CPU, attack flood alone (Mpps taken in per CPU-second)'\n")
	var top float64
	for _, d := range r.Drops {
		top = max(top, d.CPUMpps())
	}
	// Room above the highest line, which gnuplot's autoscale puts on the
	// frame, where it cannot be seen.
	fmt.Fprintf(&s, "set logscale x\nset xrange [0.8:%d]\nset yrange [0:%.2f]\nset xlabel 'rules (the flood matches the last)'\nset ylabel 'Mpps per CPU-second'\n",
		maxRules*2, max(top*1.1, 0.1))
	fmt.Fprintf(&s, "set key below\nset grid\n")
	plots := []string{fmt.Sprintf("%q using 1:2 with linespoints lw 2 pt 7 title 'L4Drop, DNS rules'", dataFile)}
	for _, d := range r.Drops {
		if d.Kind == KindL4Drop || d.Err != nil {
			continue
		}
		plots = append(plots, fmt.Sprintf("%.4f with lines dt 2 lw 2 title %q", d.CPUMpps(), d.Name))
	}
	fmt.Fprintf(&s, "plot %s\n", strings.Join(plots, ", \\\n  "))
	c := exec.Command("gnuplot")
	c.Stdin = strings.NewReader(s.String())
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	return nil
}

func (r *Report) daemon(b *strings.Builder) {
	if len(r.Daemon) == 0 {
		return
	}
	fmt.Fprintf(b, "\n## The daemon under a flood\n\n`l4drop run` on a lab interface with one component. The bench puts the "+
		"attack traffic through the loaded program by BPF_PROG_TEST_RUN from one CPU, as many packets a second as the row says, "+
		"for %s: the program samples and counts as for packets from the wire, and the veth generator does not reach 1 Mpps "+
		"here. With `--sflow`, a UDP socket in the bench is the collector and counts the flow samples that arrive; with "+
		"`--auto`, the file's rule does not match the flood, so the daemon has to find it and deploy a rule. CPU is the daemon "+
		"process's (/proc/PID/stat), over the flood and the 1.5 s after it in which the last datagrams go out.\n\n"+
		"| daemon | packets | samples written | lost in the program | lost in the daemon | exported (received) | datagrams lost | auto rules | daemon CPU |\n"+
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", (r.Daemon[0].Elapsed - 1500*time.Millisecond).Round(100*time.Millisecond))
	for _, c := range r.Daemon {
		exported := "-"
		if c.Datagrams > 0 {
			exported = fmt.Sprintf("%d in %d datagrams", c.Exported, c.Datagrams)
		}
		fmt.Fprintf(b, "| `%s`, %.2f Mpps, sample_rate %d | %d | %d | %d | %d | %s | %d | %d | %.1f %% of one core |\n",
			strings.Join(c.shownArgs(), " "), c.PPS/1e6, c.SampleRate, c.Packets, c.Samples, c.SamplesLost, c.SinkDropped,
			exported, c.DatagramsLost, c.AutoRules, c.CoreShare()*100)
	}
}

// shownArgs are the component's flags with the bench's collector address
// made generic.
func (c DaemonCost) shownArgs() []string {
	out := append([]string(nil), c.Args...)
	for i := 1; i < len(out); i++ {
		if out[i-1] == "--sflow" {
			out[i] = "COLLECTOR"
		}
	}
	return out
}

// heldOut writes the held-out check's section.
func (r *Report) heldOut(b *strings.Builder) {
	h := r.HeldOut
	if h == nil || len(h.Runs) == 0 {
		return
	}
	b.WriteString("\n## Auto-mitigation: held-out check\n\n" +
		"Cases unlike the scenarios above (other zones, ports, TTLs, headers, lengths, both families, users at 12-30 kpps), " +
		"each in a lab of its own against `l4drop run --auto` as a subprocess, all traffic put through its loaded program by " +
		"BPF_PROG_TEST_RUN: the case's legitimate traffic alone, then six times as much of it (a flash crowd: no rule may come), " +
		"then the attack with it, then the legitimate traffic until the rules expire. Every rule set the daemon's log shows is " +
		"judged offline with `l4drop test --json` on fresh packets of other seeds. Goals per case: time to mitigate ≤ 2 s, " +
		"≥ 99% of the attack dropped from then, 0 legitimate packets dropped live or matched offline, no rule in the flash crowd, " +
		"rules gone within --auto-expire + 5 s of the attack's end; the median time to mitigate ≤ 1 s. Alone: " +
		"`HELDOUT_SEED=N go test ./lab/bench -run '^$' -bench HeldOut -benchtime 1x -v`.\n\n")
	h.Markdown(b)
}
