// Package bench measures L4Drop, xdpcap and cbpfc against their peers in
// one run, side by side, and renders the result as one table and a plot.
//
// Every drop-rate row is a filter set up in a lab of its own; the rows are
// flooded in turns, a second each, for several rounds, the generator
// pinned to one CPU. The main pass floods with the attack alone, so that
// every filter does what the baseline (drop everything) does; a second,
// shorter pass adds legitimate traffic, which a correct filter must hand
// to the kernel's stack, and compares with the best any filter can do on
// that mix (Ceiling). The receiving veth's NAPI runs on the sender's CPU,
// so the rate the server side takes in is what the filter leaves of that
// CPU: a cheaper filter takes in more. Rates are counted per second the
// flood had the CPU (the sender's time on CPU and ksoftirqd's), so that
// the machine's other work moves them little, and ratios are taken between
// rows of the same round. Capture rows (xdpcap on a minimal hooked
// program and on L4Drop, tcpdump) run the capture command during a flood,
// every packet to a file; the hook's own cost is measured with
// BPF_PROG_TEST_RUN.
package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/lab"
)

// Config says what to measure and for how long.
type Config struct {
	// Duration of each drop-rate measurement.
	Duration time.Duration
	// Rounds is how often each drop-rate row is measured (in turns); the
	// median counts.
	Rounds int
	// CaptureDuration and CaptureRounds are the same for the capture rows,
	// which need a fresh lab and capture process each time.
	CaptureDuration time.Duration
	CaptureRounds   int
	// CPU the generator is pinned to (the receiver follows it).
	CPU int
	// Traffic is the attack flood, as lab template specifications: every
	// packet matches the rule under test, so every filter drops all of it,
	// as the baseline does.
	Traffic []string
	// Legit is the legitimate traffic (matching no rule) the mixed pass
	// adds to Traffic, by the templates' weights.
	Legit []string
	// MixedRounds is how often each row of the mixed pass is measured (0:
	// no mixed pass).
	MixedRounds int
	// Rules lists the rule counts L4Drop is measured with.
	Rules []int
	// Log, if set, receives a line per measurement as it finishes.
	Log io.Writer
	// Extra rows from parts measured elsewhere (cbpfc, xdpcap, build times),
	// appended to the table as they are.
	Extra []Row
}

// Mixed returns cfg for the mixed pass: the attack and the legitimate
// traffic together, measured MixedRounds times.
func (cfg Config) Mixed() Config {
	cfg.Traffic = append(slices.Clip(cfg.Traffic), cfg.Legit...)
	cfg.Legit = nil
	cfg.Rounds = cfg.MixedRounds
	return cfg
}

// LegitShare is the legitimate traffic's share of the mixed pass's
// packets, from the templates' weights.
func (cfg Config) LegitShare() (float64, error) {
	var attack, legit int
	for i, spec := range append(slices.Clip(cfg.Traffic), cfg.Legit...) {
		t, err := lab.ParseTemplate(spec)
		if err != nil {
			return 0, err
		}
		if i < len(cfg.Traffic) {
			attack += t.Weight
		} else {
			legit += t.Weight
		}
	}
	if attack+legit == 0 {
		return 0, nil
	}
	return float64(legit) / float64(attack+legit), nil
}

// DefaultConfig is what `l4lab bench` runs.
func DefaultConfig() Config {
	return Config{
		Duration:        time.Second,
		Rounds:          9,
		MixedRounds:     7,
		CaptureDuration: 5 * time.Second,
		CaptureRounds:   3,
		CPU:             runtime.NumCPU() - 1,
		Traffic:         []string{"dns,name=*.attack.example,weight=95"},
		Legit:           []string{"dns,name=www.example.org,weight=5"},
		Rules:           []int{1, 10, 100, 1000},
	}
}

// Row is one line of the table.
type Row struct {
	Group string // "L4Drop drop rate", "cbpfc", ...
	Name  string
	// Value is the absolute figure in Unit; Ratio is relative to the group's
	// baseline (0: none).
	Value float64
	Unit  string
	Ratio float64
	Note  string
}

// Kind says what a drop-rate row measures, for the ratios the report
// prints.
type Kind int

// Kinds of drop-rate rows.
const (
	KindOther      Kind = iota
	KindBaseline        // the XDP program that drops everything
	KindL4Drop          // L4Drop's DNS-rule series (Rules set)
	KindL4DropPort      // L4Drop with xdp-filter's port rule
	KindXDPFilter
	KindFloor    // floorC's port rule, a reference (Floor)
	KindFloorDNS // floorC's DNS wildcard rule, a reference (FloorDNS)
	KindIPTables
	KindNoFilter
	KindCeiling // computed by Ceiling, not measured
)

// DropRate is one drop-rate measurement.
type DropRate struct {
	Name     string
	Kind     Kind
	Rules    int // for KindL4Drop rows; 0 otherwise
	Sent     uint64
	Received uint64 // frames the server's veth took in
	Elapsed  time.Duration
	// OnCPU is the CPU time the flood got: the sending thread's, with the
	// receiving NAPI run in its context, and the CPU's ksoftirqd's, where
	// the kernel defers NAPI work it has no time for (0: not known).
	OnCPU time.Duration
	// Ratio is the median, over the rounds, of this row's rate divided by
	// the baseline's in the same round (MeasureDrops; 0 if not measured).
	Ratio float64
	// Rates is the rate per CPU-second (CPUMpps) of every round, in round
	// order, for ratios to other rows measured in the same rounds (RatioTo).
	Rates []float64
	// Err is why the row could not be measured (its filter did not load).
	Err error
}

// Mpps is the rate the server side took in, per second of wall time.
func (d DropRate) Mpps() float64 { return mpps(d.Received, d.Elapsed) }

// CPUMpps is the rate the server side took in per second the flood had
// its CPU: the inverse of what a packet cost the generator and the filter
// together. Time the CPU spent on other work of the machine (or of the
// hypervisor) does not count, so this figure, unlike Mpps, does not move
// with the machine's load. It is Mpps where the CPU time is not known.
func (d DropRate) CPUMpps() float64 { return cpuMpps(d.Received, d.Elapsed, d.OnCPU) }

// mpps is n packets in d, in Mpps (0 for no time).
func mpps(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds() / 1e6
}

// cpuMpps is n packets per second of onCPU, or per second of elapsed
// where the CPU time is not known.
func cpuMpps(n uint64, elapsed, onCPU time.Duration) float64 {
	if onCPU <= 0 {
		return mpps(n, elapsed)
	}
	return mpps(n, onCPU)
}

// Filter sets a filter up on the server side of a lab and returns how to
// take it down (the lab's removal takes everything anyway).
type Filter struct {
	Name  string
	Kind  Kind
	Rules int
	Setup func(l *lab.Lab) (cleanup func(), err error)
}

// station is a filter set up in a lab of its own, with a generator ready
// to flood it. Stations live for the whole of MeasureDrops, so that a round
// costs only its floods and rounds can be many and short.
type station struct {
	f       Filter
	l       *lab.Lab
	g       *lab.Generator
	cleanup func()
}

func newStation(cfg Config, f Filter) (_ *station, err error) {
	var ts []lab.Template
	for _, spec := range cfg.Traffic {
		t, err := lab.ParseTemplate(spec)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	s := &station{f: f}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.l, err = lab.New(); err != nil {
		return nil, err
	}
	if f.Setup != nil {
		if s.cleanup, err = f.Setup(s.l); err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	if s.g, err = lab.NewGenerator(s.l.Inet, s.l.InetIf, ts, 1); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *station) close() {
	if s.g != nil {
		s.g.Close()
	}
	if s.cleanup != nil {
		s.cleanup()
	}
	s.l.Close()
}

// measure floods the station for cfg.Duration after a short warm-up and
// returns what its server side took in.
func (s *station) measure(ctx context.Context, cfg Config) (DropRate, error) {
	res := DropRate{Name: s.f.Name, Kind: s.f.Kind, Rules: s.f.Rules}
	// A short warm-up: caches, page pools, the JIT'd program's first misses.
	if _, err := s.g.Run(ctx, lab.RunOptions{Duration: 200 * time.Millisecond, CPU: cfg.CPU + 1}); err != nil {
		return res, err
	}
	before, err := s.l.ServerCounters()
	if err != nil {
		return res, err
	}
	sirq0, ok0 := softirqTime(cfg.CPU)
	r, err := s.g.Run(ctx, lab.RunOptions{Duration: cfg.Duration, CPU: cfg.CPU + 1})
	if err != nil {
		return res, err
	}
	sirq1, ok1 := softirqTime(cfg.CPU)
	// Without both readings, the softirq share is unknown: no OnCPU.
	if r.OnCPU > 0 && ok0 && ok1 {
		res.OnCPU = r.OnCPU + sirq1 - sirq0
	}
	after, err := s.l.ServerCounters()
	if err != nil {
		return res, err
	}
	res.Sent, res.Elapsed = r.Sent, r.Elapsed
	res.Received = after.Sub(before).RxPackets
	return res, ctx.Err()
}

// MeasureDrops sets every filter up in a lab of its own, measures each
// cfg.Rounds times, in turns, and returns each one's median run. A filter
// that cannot be set up gets a row with its error.
func MeasureDrops(ctx context.Context, cfg Config, filters []Filter, logf func(string, ...any)) ([]DropRate, error) {
	stations := make([]*station, len(filters))
	runs := make([][]DropRate, len(filters))
	defer func() {
		for _, s := range stations {
			if s != nil {
				s.close()
			}
		}
	}()
	for i, f := range filters {
		s, err := newStation(cfg, f)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			logf("%-60s failed: %v", f.Name, err)
			runs[i] = []DropRate{{Name: f.Name, Kind: f.Kind, Rules: f.Rules, Err: err}}
			continue
		}
		stations[i] = s
	}
	for round := range max(cfg.Rounds, 1) {
		// Each round starts at another row, so that none always comes
		// first after a pause or after the same neighbour.
		for k := range stations {
			i := (round + k) % len(stations)
			s := stations[i]
			if s == nil {
				continue
			}
			r, err := s.measure(ctx, cfg)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.f.Name, err)
			}
			logf("round %d  %-60s %8.3f Mpps, %8.3f per CPU-second", round+1, r.Name, r.Mpps(), r.CPUMpps())
			runs[i] = append(runs[i], r)
		}
	}
	// The machine's other work drifts over a run; a ratio to the baseline
	// measured in the same round cancels most of it.
	out := make([]DropRate, len(filters))
	for i, rs := range runs {
		var rates []float64
		out[i], rates = medianRound(rs, DropRate.CPUMpps)
		if rs[0].Err != nil {
			continue
		}
		out[i].Rates = rates
	}
	if len(out) > 0 {
		for i := range out {
			out[i].Ratio = out[i].RatioTo(out[0])
		}
	}
	return out, nil
}

// medianRound returns the round of rs with the median rate, and each
// round's rate in the order measured.
func medianRound[T any](rs []T, rate func(T) float64) (T, []float64) {
	rates := make([]float64, len(rs))
	for i, r := range rs {
		rates[i] = rate(r)
	}
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b T) int { return cmp.Compare(rate(a), rate(b)) })
	return sorted[len(sorted)/2], rates
}

// RatioTo is the median, over the rounds both were measured in, of d's
// rate per CPU-second divided by ref's in the same round; 0 if there is
// none.
func (d DropRate) RatioTo(ref DropRate) float64 { return d.RatiosTo(ref).Median }

// RatiosTo summarizes the per-round ratios of d's rate to ref's.
func (d DropRate) RatiosTo(ref DropRate) Ratio { return roundRatios(d.Rates, ref.Rates) }

// Ceiling is the best any correct filter can do on traffic of which a
// share legit must reach the server: drop the rest as cheaply as the
// baseline drops a packet, and hand legit to the stack at what the stack
// costs a packet when no filter runs. Both costs are the inverse of the
// rows' rates per CPU-second, so the ceiling's rate in each round is
// 1/((1-legit)/base + legit/stack) from the two rows of that round; its
// Rates hold them, for RatiosTo, and CeilingRate their median.
func Ceiling(base, stack DropRate, legit float64) DropRate {
	c := DropRate{Name: fmt.Sprintf("ceiling of any filter that lets the %.0f%% legitimate queries through", 100*legit), Kind: KindCeiling}
	for i := range min(len(base.Rates), len(stack.Rates)) {
		b, n := base.Rates[i], stack.Rates[i]
		if b > 0 && n > 0 {
			c.Rates = append(c.Rates, 1/((1-legit)/b+legit/n))
		} else {
			c.Rates = append(c.Rates, 0)
		}
	}
	return c
}

// CeilingRate is the median of a Ceiling's per-round rates.
func (d DropRate) CeilingRate() float64 {
	var v []float64
	for _, r := range d.Rates {
		if r > 0 {
			v = append(v, r)
		}
	}
	return median(v)
}

// Ratio summarizes the ratios between two rows' rates round by round.
type Ratio struct {
	// Median of the ratios; Low and High their lower and upper quartiles
	// (with fewer than 4 rounds, the smallest and the largest).
	Median, Low, High float64
	// Rounds is how many rounds both rows were measured in.
	Rounds int
}

// String formats the ratio as "0.82 (0.70–0.95)" with the digits given.
func (r Ratio) format(digits int, unit string) string {
	if r.Rounds == 0 {
		return ""
	}
	if r.Rounds == 1 {
		return fmt.Sprintf("%.*f%s", digits, r.Median, unit)
	}
	return fmt.Sprintf("%.*f%s (%.*f–%.*f)", digits, r.Median, unit, digits, r.Low, digits, r.High)
}

func roundRatios(a, ref []float64) Ratio {
	var v []float64
	for i := range min(len(a), len(ref)) {
		if a[i] > 0 && ref[i] > 0 {
			v = append(v, a[i]/ref[i])
		}
	}
	r := Ratio{Median: median(v), Rounds: len(v)}
	if len(v) == 0 {
		return r
	}
	slices.Sort(v)
	r.Low, r.High = v[0], v[len(v)-1]
	if len(v) >= 4 {
		r.Low, r.High = v[(len(v)-1)/4], v[len(v)-1-(len(v)-1)/4]
	}
	return r
}

// LoadAverage is the first three fields of /proc/loadavg.
func LoadAverage() string {
	buf, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(buf))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// DropAll is the baseline: an XDP program that drops everything.
func DropAll() Filter {
	return Filter{Name: "XDP drop-all (baseline)", Kind: KindBaseline, Setup: func(l *lab.Lab) (func(), error) {
		prog, err := newDropAll()
		if err != nil {
			return nil, err
		}
		lk, err := l.AttachServer(prog)
		if err != nil {
			prog.Close()
			return nil, err
		}
		return func() { lk.Close(); prog.Close() }, nil
	}}
}

// newDropAll loads the baseline: an XDP program that returns XDP_DROP.
func newDropAll() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{Name: "drop_all", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
}

// NoFilter lets the stack drop the flood (no listener on the port).
func NoFilter() Filter {
	return Filter{Name: "no filter (the stack drops it)", Kind: KindNoFilter}
}

// IPTables drops with iptables' raw table and the bpf match on bytecode
// (`N,op jt jf k,...`, packet from the IP header on).
func IPTables(bytecode string) Filter {
	return Filter{Name: "iptables raw -m bpf, 1 DNS rule, same bytecode", Kind: KindIPTables, Setup: func(l *lab.Lab) (func(), error) {
		return nil, runIn(l, "iptables", "-t", "raw", "-A", "PREROUTING", "-i", l.ServerIf,
			"-m", "bpf", "--bytecode", bytecode, "-j", "DROP")
	}}
}

// XDPFilter drops with xdp-filter's port rule.
func XDPFilter(port int, proto string) Filter {
	return Filter{Name: fmt.Sprintf("xdp-filter, 1 port rule: %s dst port %d", proto, port), Kind: KindXDPFilter, Setup: func(l *lab.Lab) (func(), error) {
		// `ip netns exec` gives the command a fresh /sys without bpffs;
		// xdp-filter pins its maps, so mount one for the two commands.
		script := fmt.Sprintf("mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m native %s && xdp-filter port %d -p %s -m dst",
			l.ServerIf, port, proto)
		return nil, runIn(l, "sh", "-c", script)
	}}
}

func runIn(l *lab.Lab, name string, args ...string) error {
	out, err := l.Server.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Have reports whether a command is installed.
func Have(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// ErrSkipped marks a row that could not be measured on this machine.
var ErrSkipped = errors.New("skipped")

// Machine describes where the run happened.
func Machine() string {
	var b strings.Builder
	if buf, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(buf), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				b.WriteString(strings.TrimSpace(v))
				break
			}
		}
	}
	fmt.Fprintf(&b, ", %d CPUs", runtime.NumCPU())
	if out, err := exec.Command("uname", "-srm").Output(); err == nil {
		fmt.Fprintf(&b, ", %s", strings.TrimSpace(string(out)))
	}
	return b.String()
}

// RawBytecode compiles a pcap-filter expression for packets that start at
// the IP header (as iptables' bpf match and L4Drop rules see them) with
// tcpdump, reading an empty capture of link type RAW, and returns it in the
// `N,op jt jf k,...` form.
func RawBytecode(expr string) (string, error) {
	f, err := os.CreateTemp("", "l4lab-raw-*.pcap")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	// pcap file header: magic, version 2.4, zone, sigfigs, snaplen, LINKTYPE_RAW (101).
	hdr := []byte{0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 101, 0, 0, 0}
	_, werr := f.Write(hdr)
	if err := errors.Join(werr, f.Close()); err != nil {
		return "", err
	}
	out, err := exec.Command("tcpdump", "-ddd", "-r", f.Name(), expr).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("tcpdump -ddd %q: %s", expr, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, ","), nil
}

// softirqTime is how long the CPU's ksoftirqd thread has run: NAPI work the
// kernel deferred out of the sender's context runs there.
func softirqTime(cpu int) (time.Duration, bool) {
	pid, ok := ksoftirqd(cpu)
	if !ok {
		return 0, false
	}
	buf, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(buf))
	if len(f) < 1 {
		return 0, false
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns), err == nil
}

var ksoftirqdPIDs sync.Map // CPU → pid

func ksoftirqd(cpu int) (int, bool) {
	if pid, ok := ksoftirqdPIDs.Load(cpu); ok {
		return pid.(int), true
	}
	want := fmt.Sprintf("ksoftirqd/%d\n", cpu)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// Kernel threads have low PIDs; looking further is wasted.
		if pid > 1000 {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && string(comm) == want {
			ksoftirqdPIDs.Store(cpu, pid)
			return pid, true
		}
	}
	return 0, false
}
