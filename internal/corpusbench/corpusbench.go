// Package corpusbench measures the cbpfc backends over a set of filters,
// side by side in one run: instructions of a minimal XDP program per
// filter, the verifier's processed instructions, and nanoseconds per
// packet above an empty XDP program.
//
// Timing. BPF_PROG_TEST_RUN reports the mean duration of its runs in whole
// nanoseconds, too coarse for filters that cost one or two. And a program
// run repeatedly with BPF_PROG_TEST_RUN is added to the kernel's XDP
// dispatcher for the call unless it is attached somewhere, which costs tens of
// milliseconds and disturbs what follows. So Measure keeps three programs
// attached at once, in generic mode, in a network namespace of its own: the
// empty program, and one filter's eBPF and C programs. It then times the
// three in turn on one CPU, round after round, with the wall clock around
// each call (a call's fixed cost is the same for all three and cancels
// out; a call the scheduler interrupted is measured again), and
// takes, per filter, the median over the rounds of each program's time
// minus the empty program's time of the same round.
package corpusbench

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/cbpfc"
	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
)

// Filter is one filter to measure.
type Filter struct {
	Name string // say "filters.tsv:12"
	Expr string // the pcap-filter expression, if any
	// Raw says the filter expects the packet from the IP header on (RAW),
	// rather than from the Ethernet header (EN10MB).
	Raw  bool
	Prog []bpf.Instruction
}

// Comparable reports whether the reference compiler (the best existing
// cBPF to eBPF compiler, which the project's targets compare with) accepts
// the filter: no backward jumps (libpcap's protochain loops) and no
// extensions other than len.
func (f Filter) Comparable() bool {
	for _, ins := range f.Prog {
		ri, err := ins.Assemble()
		if err != nil {
			return false
		}
		switch {
		case ri.Op == 0x05 && int32(ri.K) < 0: // ja backwards
			return false
		case ri.Op&0x07 == 0x00 && ri.Op&0xe0 == 0x20 && ri.K >= 0xfffff000: // ld [SKF_AD_OFF+n]
			return false
		}
	}
	return true
}

// Packet is a frame that timed runs use, from the Ethernet header on.
// RAW filters get it from its IP header on.
type Packet struct {
	Name  string
	Frame []byte
}

// Options of a measurement.
type Options struct {
	Packets []Packet
	// Repeat is the number of runs per program, filter and packet,
	// spread over Rounds calls of BPF_PROG_TEST_RUN; 0 means no timing
	// at all.
	Repeat int
	// Rounds is the number of interleaved calls Repeat is split into;
	// 0 means DefaultRounds, fewer if a call would make less than
	// MinRuns runs.
	Rounds int
}

// DefaultRounds is the number of timing rounds when Options.Rounds is 0.
const DefaultRounds = 15

// MinRuns is the fewest runs a call makes when Options.Rounds is 0: below
// that, the call's own cost (a couple of microseconds) adds noise.
const MinRuns = 1000

// Stats summarizes a number over the filters.
type Stats struct {
	N, Sum, Median, P90, Max int
}

// Mean is Sum over N.
func (s Stats) Mean() float64 {
	if s.N == 0 {
		return 0
	}
	return float64(s.Sum) / float64(s.N)
}

func (s Stats) String() string {
	return fmt.Sprintf("sum %d, median %d, p90 %d, max %d", s.Sum, s.Median, s.P90, s.Max)
}

func stats(v []int) Stats {
	if len(v) == 0 {
		return Stats{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	var sum int
	for _, x := range s {
		sum += x
	}
	return Stats{N: len(s), Sum: sum, Median: s[len(s)/2], P90: s[(len(s)*9)/10], Max: s[len(s)-1]}
}

// Timing is nanoseconds per packet above the empty XDP program, over the
// filters: the median and mean of the filters' figures.
type Timing struct {
	Packet       string
	Median, Mean float64
}

// Backend holds one backend's figures.
type Backend struct {
	Name  string
	Insns Stats // instructions of the minimal XDP program
	// Processed counts the instructions the verifier processed, over all
	// filters; ProcessedComparable only over the filters the reference
	// compiler accepts (Filter.Comparable).
	Processed, ProcessedComparable Stats
	Timings                        []Timing
	Failed                         []string // filters that did not compile or load, with the error
	// PerFilter holds each filter's instruction count (-1: failed), and
	// PerFilterProcessed the verifier's processed instructions.
	PerFilter, PerFilterProcessed []int
	// PerFilterNs holds each filter's time above the empty program,
	// per packet (nil when not timed).
	PerFilterNs [][]float64
}

// Result of a measurement.
type Result struct {
	Filters int
	// Comparable is the number of filters the reference compiler accepts.
	Comparable int
	// EmptyNs is the time per run of an empty XDP program, per packet,
	// as the kernel measures it (mean over filters and rounds).
	EmptyNs []float64
	// Packets names the timed packets.
	Packets []string
	// Runs and Rounds: each timing is Rounds calls of Runs runs.
	Runs, Rounds int
	EBPF, C      Backend
	// EBPFMinusC is, per packet, the median and mean over the filters
	// that both backends compiled of the eBPF program's time minus the C
	// program's, each filter's the median over rounds.
	EBPFMinusC []Timing
}

// CorpusFilters compiles the corpus's filters.tsv with libpcap.
func CorpusFilters(tb testing.TB) []Filter {
	tb.Helper()
	var out []Filter
	for _, f := range fixture.CorpusFilters(tb) {
		lt, err := cbpf.ParseLinkType(f.LinkType)
		if err != nil {
			tb.Fatalf("filters.tsv:%d: %v", f.Line, err)
		}
		prog, err := cbpf.Compile(f.Expr, lt, 262144)
		if err != nil {
			tb.Fatalf("filters.tsv:%d: %s: %v", f.Line, f.Expr, err)
		}
		out = append(out, Filter{Name: fmt.Sprintf("filters.tsv:%d", f.Line), Expr: f.Expr, Raw: f.LinkType == "RAW", Prog: prog})
	}
	return out
}

// DefaultPackets are a 64-byte UDP/IPv4 frame and a TCP SYN.
func DefaultPackets() []Packet {
	udp := fixture.UDP4("198.18.0.1", "198.18.0.2", 40000, 53, make([]byte, 64-42))
	syn := fixture.TCP4SYN("198.18.0.1", "198.18.0.2", 40000, 80)
	return []Packet{{Name: "udp4-64", Frame: udp}, {Name: "tcp4-syn", Frame: syn}}
}

// Measure compiles, loads and times every filter with both backends.
func Measure(tb testing.TB, filters []Filter, opts Options) (*Result, error) {
	tb.Helper()
	fixture.RequireRoot(tb)
	res := &Result{Filters: len(filters), EBPF: Backend{Name: "ebpf"}, C: Backend{Name: "c (clang -mcpu=v3)"}}
	for _, f := range filters {
		if f.Comparable() {
			res.Comparable++
		}
	}
	timed := opts.Repeat > 0 && len(opts.Packets) > 0
	var slots *slots
	if timed {
		res.Rounds = opts.Rounds
		if res.Rounds <= 0 {
			res.Rounds = max(1, min(DefaultRounds, opts.Repeat/MinRuns))
		}
		res.Runs = max(1, opts.Repeat/res.Rounds)
		var err error
		if slots, err = newSlots(tb, 3); err != nil {
			return nil, err
		}
	}

	// All C programs in one clang run.
	var src strings.Builder
	src.WriteString(cbpfc.CPrelude)
	cOK := make([]bool, len(filters))
	for i, f := range filters {
		s, err := cbpfc.XDPProgramC(f.Prog, fmt.Sprintf("f%d", i))
		if err != nil {
			res.C.Failed = append(res.C.Failed, fmt.Sprintf("%s: %v", f.Name, err))
			continue
		}
		cOK[i] = true
		src.WriteString(s)
	}
	src.WriteString("char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n")
	// -mcpu=v3 (32-bit jumps) as L4Drop builds its programs.
	obj, err := clang.Compile(context.Background(), src.String(), "-mcpu=v3")
	if err != nil {
		return nil, err
	}
	cspec, err := ebpf.LoadCollectionSpecFromReader(strings.NewReader(string(obj)))
	if err != nil {
		return nil, err
	}

	empty, err := load(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 2), asm.Return(),
	}})
	if err != nil {
		return nil, err
	}
	defer empty.Close()
	if timed {
		if err := slots.set(0, empty); err != nil {
			return nil, err
		}
		res.EmptyNs = make([]float64, len(opts.Packets))
		for _, p := range opts.Packets {
			res.Packets = append(res.Packets, p.Name)
		}
	}

	frames := func(raw bool) [][]byte {
		var out [][]byte
		for _, p := range opts.Packets {
			if raw {
				off, ok := fixture.IPOffset(p.Frame)
				if !ok {
					off = 14
				}
				out = append(out, p.Frame[off:])
			} else {
				out = append(out, p.Frame)
			}
		}
		return out
	}

	backends := []*Backend{&res.EBPF, &res.C}
	type acc struct{ insns, processed, comparable []int }
	accs := []*acc{{}, {}}
	for _, b := range backends {
		b.PerFilter = make([]int, len(filters))
		b.PerFilterProcessed = make([]int, len(filters))
		if timed {
			b.PerFilterNs = make([][]float64, len(filters))
		}
	}
	var emptyRuns int
	diffs := make([][]float64, len(opts.Packets)) // eBPF minus C, per packet
	for i, f := range filters {
		specs := make([]*ebpf.ProgramSpec, 2)
		insns, err := cbpfc.XDPProgram(f.Prog)
		if err != nil {
			res.EBPF.Failed = append(res.EBPF.Failed, fmt.Sprintf("%s: %v", f.Name, err))
		} else {
			specs[0] = &ebpf.ProgramSpec{Name: "cbpfc", Type: ebpf.XDP, License: "GPL", Instructions: insns}
		}
		if cOK[i] {
			specs[1] = cspec.Programs[fmt.Sprintf("f%d", i)]
		}
		progs := []*ebpf.Program{empty, nil, nil}
		closeAll := func() {
			for _, p := range progs[1:] {
				if p != nil {
					p.Close()
				}
			}
		}
		for j, b := range backends {
			b.PerFilter[i], b.PerFilterProcessed[i] = -1, -1
			spec := specs[j]
			if spec == nil {
				continue
			}
			prog, err := load(spec)
			if err != nil {
				b.Failed = append(b.Failed, fmt.Sprintf("%s: %v", f.Name, err))
				continue
			}
			progs[j+1] = prog
			a := accs[j]
			a.insns = append(a.insns, int(spec.Instructions.Size()/asm.InstructionSize))
			b.PerFilter[i] = a.insns[len(a.insns)-1]
			info, err := prog.Info()
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("%s: %w", f.Name, err)
			}
			if n, ok := info.VerifiedInstructions(); ok {
				a.processed = append(a.processed, int(n))
				if f.Comparable() {
					a.comparable = append(a.comparable, int(n))
				}
				b.PerFilterProcessed[i] = int(n)
			}
		}
		if timed {
			if err := timeFilter(slots, progs, frames(f.Raw), res, i, diffs); err != nil {
				closeAll()
				return nil, fmt.Errorf("%s: %w", f.Name, err)
			}
			emptyRuns++
		}
		closeAll()
	}
	for j, b := range backends {
		a := accs[j]
		b.Insns, b.Processed, b.ProcessedComparable = stats(a.insns), stats(a.processed), stats(a.comparable)
	}
	if !timed {
		return res, nil
	}
	for k := range res.EmptyNs {
		res.EmptyNs[k] /= float64(max(1, emptyRuns))
	}
	for _, b := range backends {
		for k, p := range opts.Packets {
			var v []float64
			for _, ns := range b.PerFilterNs {
				if len(ns) > k {
					v = append(v, ns[k])
				}
			}
			if len(v) > 0 {
				b.Timings = append(b.Timings, Timing{Packet: p.Name, Median: median(v), Mean: mean(v)})
			}
		}
	}
	for k, p := range opts.Packets {
		if len(diffs[k]) > 0 {
			res.EBPFMinusC = append(res.EBPFMinusC, Timing{Packet: p.Name, Median: median(diffs[k]), Mean: mean(diffs[k])})
		}
	}
	return res, nil
}

// timeFilter times progs (the empty program, then the filter's eBPF and
// C programs, nil when missing) on each packet and records filter i's
// figures in res and diffs.
func timeFilter(sl *slots, progs []*ebpf.Program, pkts [][]byte, res *Result, i int, diffs [][]float64) error {
	for j, p := range progs {
		if p != nil {
			if err := sl.set(j, p); err != nil {
				return err
			}
		}
	}
	backends := []*Backend{&res.EBPF, &res.C}
	for k, pkt := range pkts {
		wall, kernel, err := timeRounds(progs, pkt, res.Rounds, res.Runs)
		if err != nil {
			return err
		}
		res.EmptyNs[k] += mean(kernel)
		above := make([][]float64, len(progs))
		for j := 1; j < len(progs); j++ {
			if progs[j] == nil {
				continue
			}
			above[j] = make([]float64, res.Rounds)
			for r := range above[j] {
				above[j][r] = wall[j][r] - wall[0][r]
			}
			backends[j-1].PerFilterNs[i] = append(backends[j-1].PerFilterNs[i], median(above[j]))
		}
		if above[1] != nil && above[2] != nil {
			d := make([]float64, res.Rounds)
			for r := range d {
				d[r] = above[1][r] - above[2][r]
			}
			diffs[k] = append(diffs[k], median(d))
		}
	}
	return nil
}

// maxCallOverhead is the most a call of BPF_PROG_TEST_RUN takes beyond
// the runs the kernel times (system call, copying the packet in and out);
// a call that took longer was preempted.
const maxCallOverhead = 20 * time.Microsecond

// timeRounds runs each program runs times on pkt, rounds times in turn,
// and returns per program and round the wall-clock time per run, and the
// kernel's own figure for the first program.
func timeRounds(progs []*ebpf.Program, pkt []byte, rounds, runs int) (wall [][]float64, kernel []float64, err error) {
	// All rounds on one CPU: programs compared on different CPUs (one
	// busier, or sharing a core) would differ by that too.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if unix.SchedGetaffinity(0, &old) == nil {
		var cpu, node uint32
		if _, _, errno := unix.Syscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), uintptr(unsafe.Pointer(&node)), 0); errno == 0 {
			var one unix.CPUSet
			one.Set(int(cpu))
			if unix.SchedSetaffinity(0, &one) == nil {
				defer unix.SchedSetaffinity(0, &old)
			}
		}
	}
	wall = make([][]float64, len(progs))
	for j := range progs {
		wall[j] = make([]float64, rounds)
	}
	// One untimed call each first: the first run of a program after
	// another is slower (caches, branch predictors).
	for _, p := range progs {
		if p != nil {
			if _, _, err := p.Benchmark(pkt, runs, nil); err != nil {
				return nil, nil, fmt.Errorf("test run: %w", err)
			}
		}
	}
	for r := range rounds {
		for n := range progs {
			// Rotate the order, so that none always follows another.
			j := (n + r) % len(progs)
			p := progs[j]
			if p == nil {
				continue
			}
			for try := 0; ; try++ {
				interrupted := false
				start := time.Now()
				_, d, err := p.Benchmark(pkt, runs, func() { interrupted = true })
				el := time.Since(start)
				if err != nil {
					return nil, nil, fmt.Errorf("test run: %w", err)
				}
				// A signal restarts the call, which the wall clock
				// then counts twice; and time given to other tasks
				// (the kernel leaves it out of its own figure) is no
				// cost of the program: measure again.
				disturbed := el-time.Duration(runs)*d > maxCallOverhead
				if (interrupted || disturbed) && try < 5 {
					continue
				}
				wall[j][r] = float64(el.Nanoseconds()) / float64(runs)
				if j == 0 {
					kernel = append(kernel, float64(d.Nanoseconds()))
				}
				break
			}
		}
	}
	return wall, kernel, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}

// slots keeps programs attached (generic XDP) to the interfaces of a
// namespace of their own, so that test runs do not add them to the
// kernel's XDP dispatcher and remove them again on every call.
type slots struct {
	ns      *netns.NS
	ifindex []int
	links   []link.Link
	progs   []*ebpf.Program
}

// newSlots makes a namespace with n interfaces (lo and veths), removed
// with everything attached at cleanup.
func newSlots(tb testing.TB, n int) (*slots, error) {
	tb.Helper()
	ns := fixture.Netns(tb, "l4cb")
	s := &slots{ifindex: []int{1}, links: make([]link.Link, n), progs: make([]*ebpf.Program, n)}
	tb.Cleanup(func() {
		for _, l := range s.links {
			if l != nil {
				l.Close()
			}
		}
	})
	for i := 1; i < n; i += 2 {
		a, b := fmt.Sprintf("cb%da", i), fmt.Sprintf("cb%db", i)
		if err := netns.NewVeth(ns, a, ns, b); err != nil {
			return nil, err
		}
		for _, name := range []string{a, b} {
			err := ns.Do(func() error {
				ifi, err := net.InterfaceByName(name)
				if err != nil {
					return err
				}
				s.ifindex = append(s.ifindex, ifi.Index)
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
	}
	s.ifindex = s.ifindex[:n]
	s.ns = ns
	return s, nil
}

// set attaches p to interface i, in place of the program there.
func (s *slots) set(i int, p *ebpf.Program) error {
	if s.progs[i] == p {
		return nil
	}
	if s.links[i] != nil {
		if err := s.links[i].Update(p); err != nil {
			return fmt.Errorf("replace the XDP program of ifindex %d: %w", s.ifindex[i], err)
		}
		s.progs[i] = p
		return nil
	}
	// Interface indexes are per namespace.
	err := s.ns.Do(func() error {
		l, err := link.AttachXDP(link.XDPOptions{Program: p, Interface: s.ifindex[i], Flags: link.XDPGenericMode})
		if err != nil {
			return fmt.Errorf("attach to ifindex %d for test runs: %w", s.ifindex[i], err)
		}
		s.links[i] = l
		return nil
	})
	if err != nil {
		return err
	}
	s.progs[i] = p
	return nil
}

func load(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	return ebpf.NewProgramWithOptions(spec, ebpf.ProgramOptions{LogSizeStart: 1 << 16})
}

// Table formats the result as text: a header line, then one row per
// backend, then the paired comparison of the two.
func (r *Result) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d filters (%d of them without loops or extensions other than len, as the reference compiler accepts)\n", r.Filters, r.Comparable)
	if len(r.EmptyNs) > 0 {
		b.WriteString("empty XDP program:")
		for i, ns := range r.EmptyNs {
			fmt.Fprintf(&b, " %s %.1f ns", r.Packets[i], ns)
			if i < len(r.EmptyNs)-1 {
				b.WriteString(",")
			}
		}
		fmt.Fprintf(&b, "; timing: per filter, %d interleaved rounds of %d runs per program, median over rounds of (program - empty)\n", r.Rounds, r.Runs)
	}
	rows := [][]string{{"backend", "instructions (minimal XDP program)", "verifier processed: all filters", "reference's filters", "ns/packet above empty (median/mean)"}}
	for _, be := range []Backend{r.EBPF, r.C} {
		var ts []string
		for _, t := range be.Timings {
			ts = append(ts, fmt.Sprintf("%s %.2f/%.2f", t.Packet, t.Median, t.Mean))
		}
		p, pc := be.Processed, be.ProcessedComparable
		rows = append(rows, []string{be.Name, be.Insns.String(),
			fmt.Sprintf("sum %d, mean %.1f, median %d, max %d", p.Sum, p.Mean(), p.Median, p.Max),
			fmt.Sprintf("sum %d, mean %.1f", pc.Sum, pc.Mean()),
			strings.Join(ts, ", ")})
	}
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	for _, row := range rows {
		for i, c := range row {
			if i == len(row)-1 {
				b.WriteString(c)
				continue
			}
			fmt.Fprintf(&b, "%-*s  ", width[i], c)
		}
		b.WriteString("\n")
	}
	if len(r.EBPFMinusC) > 0 {
		var ts []string
		for _, t := range r.EBPFMinusC {
			ts = append(ts, fmt.Sprintf("%s %+.2f/%+.2f", t.Packet, t.Median, t.Mean))
		}
		fmt.Fprintf(&b, "ebpf - c, per filter (median/mean ns/packet): %s\n", strings.Join(ts, ", "))
	}
	for _, be := range []Backend{r.EBPF, r.C} {
		if len(be.Failed) > 0 {
			fmt.Fprintf(&b, "%s: %d failed: %s\n", be.Name, len(be.Failed), strings.Join(be.Failed, "; "))
		}
	}
	return b.String()
}
