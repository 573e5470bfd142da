package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// BuildLoad is the time l4drop took to build and to load a rule set.
type BuildLoad struct {
	Rules       int
	Build, Load time.Duration
	Err         error
}

// Report is everything one run measured.
type Report struct {
	Date             time.Time
	Machine, Command string
	// Load is the load average before and after the run: other work on the
	// machine shows in every row.
	Load       string
	Config     Config
	Drops      []DropRate // the first is the baseline
	Captures   []CaptureRate
	BuildLoads []BuildLoad
	// CBPFC is cbpfc's corpus table, as its benchmark prints it.
	CBPFC string
	Notes []string
}

func (r *Report) baseline() float64 {
	if len(r.Drops) == 0 {
		return 0
	}
	return r.Drops[0].Mpps()
}

// Markdown renders the report as docs/benchmarks.md.
func (r *Report) Markdown(plot string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Measured by `%s` on %s.\n\n", r.Command, r.Date.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Machine: %s. Load average before and after: %s.\n\n", r.Machine, r.Load)
	fmt.Fprintf(&b, "Every row below was measured in the same run. Each drop-rate row gets a fresh lab (two network "+
		"namespaces joined by a veth pair). The generator (`l4lab gen`: BPF_PROG_TEST_RUN in live-frames mode, redirecting "+
		"into the veth) floods the server side for %s from CPU %d with %s; the filter under test runs on the server's veth. "+
		"The receiving veth's NAPI runs on the sender's CPU, so the rate the server takes in is what the filter leaves of "+
		"that CPU: a cheaper filter takes in more. Rows are measured %d times, in turns; the table shows the median rate "+
		"and the median of the ratios to the XDP drop-all program measured in the same round.\n\n",
		r.Config.Duration, r.Config.CPU, strings.Join(quote(r.Config.Traffic), " + "), r.Config.Rounds)
	fmt.Fprintf(&b, "## Drop rate\n\n| filter on the server's veth | Mpps taken in | vs XDP drop-all | packets sent |\n|---|---:|---:|---:|\n")
	base := r.baseline()
	for _, d := range r.Drops {
		if d.Err != nil {
			fmt.Fprintf(&b, "| %s | failed: %s | | |\n", d.Name, oneLine(d.Err.Error()))
			continue
		}
		fmt.Fprintf(&b, "| %s | %.3f | %.2f | %d |\n", d.Name, d.Mpps(), d.ratio(base), d.Sent)
	}
	if plot != "" {
		fmt.Fprintf(&b, "\n![drop rate against rule count](%s)\n", plot)
	}
	if idle, plain, ok := r.idleCapture(); ok {
		fmt.Fprintf(&b, "\nAn idle xdpcap (attached, filter matching nothing) costs %.1f ns per packet: "+
			"1/%.3f Mpps - 1/%.3f Mpps.\n", (1/idle-1/plain)*1e3, idle, plain)
	}
	if len(r.Captures) > 0 {
		fmt.Fprintf(&b, "\n## Capture rate\n\nThe same flood at full speed, every packet captured to a file.\n\n"+
			"| capture | Mpps captured | lost | vs tcpdump | packets sent |\n|---|---:|---:|---:|---:|\n")
		var tcpdump float64
		for _, c := range r.Captures {
			if strings.HasPrefix(c.Name, "tcpdump") {
				tcpdump = c.Mpps()
			}
		}
		for _, c := range r.Captures {
			ratio := ""
			if tcpdump > 0 {
				ratio = fmt.Sprintf("%.1f×", c.Mpps()/tcpdump)
			}
			fmt.Fprintf(&b, "| %s | %.3f | %d (%.2f%%) | %s | %d |\n", c.Name, c.Mpps(), c.Lost, c.LostPct(), ratio, c.Sent)
		}
	}
	if len(r.BuildLoads) > 0 {
		fmt.Fprintf(&b, "\n## Build and load\n\n`l4drop build` (C generation and clang) and `l4drop load` (verifier, attach, pins), wall time of the commands.\n\n"+
			"| rules | build | load |\n|---:|---:|---:|\n")
		for _, bl := range r.BuildLoads {
			if bl.Err != nil {
				fmt.Fprintf(&b, "| %d | failed: %s | |\n", bl.Rules, oneLine(bl.Err.Error()))
				continue
			}
			fmt.Fprintf(&b, "| %d | %.2f s | %.2f s |\n", bl.Rules, bl.Build.Seconds(), bl.Load.Seconds())
		}
	}
	if r.CBPFC != "" {
		fmt.Fprintf(&b, "\n## cbpfc over the corpus filters\n\n```text\n%s\n```\n", strings.TrimSpace(r.CBPFC))
	}
	if len(r.Notes) > 0 {
		fmt.Fprintf(&b, "\n## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

func (r *Report) idleCapture() (idle, plain float64, ok bool) {
	for _, d := range r.Drops {
		switch {
		case strings.Contains(d.Name, "xdpcap attached"):
			idle = d.Mpps()
		case d.Name == "L4Drop, 1 rule":
			plain = d.Mpps()
		}
	}
	return idle, plain, idle > 0 && plain > 0
}

func (d DropRate) ratio(base float64) float64 {
	if d.Ratio > 0 {
		return d.Ratio
	}
	if base > 0 {
		return d.Mpps() / base
	}
	return 0
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
		if d.Rules > 0 && d.Err == nil && !strings.Contains(d.Name, "xdpcap") {
			fmt.Fprintf(&data, "%d %.4f\n", d.Rules, d.Mpps())
			maxRules = max(maxRules, d.Rules)
		}
	}
	dataFile := filepath.Join(dir, "l4drop.dat")
	if err := os.WriteFile(dataFile, []byte(data.String()), 0o644); err != nil {
		return err
	}
	var s strings.Builder
	fmt.Fprintf(&s, "set terminal png size 800,600\nset output %q\n", png)
	fmt.Fprintf(&s, "set title 'Drop rate on a veth, one CPU (Mpps taken in by the server)'\n")
	fmt.Fprintf(&s, "set logscale x\nset xrange [0.8:%d]\nset yrange [0:*]\nset xlabel 'rules (the flood matches the last)'\nset ylabel 'Mpps'\n", maxRules*2)
	fmt.Fprintf(&s, "set key below\nset grid\n")
	plots := []string{fmt.Sprintf("%q using 1:2 with linespoints lw 2 pt 7 title 'L4Drop'", dataFile)}
	for _, d := range r.Drops {
		if d.Rules > 0 || d.Err != nil {
			continue
		}
		plots = append(plots, fmt.Sprintf("%.4f with lines dt 2 lw 2 title %q", d.Mpps(), d.Name))
	}
	fmt.Fprintf(&s, "plot %s\n", strings.Join(plots, ", \\\n  "))
	c := exec.Command("gnuplot")
	c.Stdin = strings.NewReader(s.String())
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %v: %s", err, out)
	}
	return nil
}
