// Package corpusbench measures the cbpfc backends over a set of filters,
// side by side in one run: instructions of a minimal XDP program per
// filter, the verifier's processed instructions, and nanoseconds per
// packet above an empty XDP program.
package corpusbench

import (
	"context"
	"fmt"

	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/cbpfc"
	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/internal/fixture"
)

// Filter is one filter to measure.
type Filter struct {
	Name string // say "filters.tsv:12"
	// Raw says the filter expects the packet from the IP header on (RAW),
	// rather than from the Ethernet header (EN10MB).
	Raw  bool
	Prog []bpf.Instruction
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
	// Repeat is the number of runs per timing (BPF_PROG_TEST_RUN repeat);
	// 0 means no timing at all.
	Repeat int
}

// Stats summarizes a number over the filters.
type Stats struct {
	Sum, Median, P90, Max int
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
	return Stats{Sum: sum, Median: s[len(s)/2], P90: s[(len(s)*9)/10], Max: s[len(s)-1]}
}

// Timing is nanoseconds per packet above the empty XDP program, over the
// filters.
type Timing struct {
	Packet       string
	Median, Mean float64
}

// Backend holds one backend's figures.
type Backend struct {
	Name      string
	Insns     Stats // instructions of the minimal XDP program
	Processed Stats // instructions the verifier processed
	Timings   []Timing
	Failed    []string // filters that did not compile or load, with the error
	// PerFilter holds each filter's instruction count (-1: failed), and
	// PerFilterProcessed the verifier's processed instructions.
	PerFilter, PerFilterProcessed []int
	// PerFilterNs holds each filter's time above the empty program,
	// per packet.
	PerFilterNs [][]float64
}

// Result of a measurement.
type Result struct {
	Filters int
	// EmptyNs is the time per run of an empty XDP program, per packet.
	EmptyNs []float64
	EBPF, C Backend
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
		out = append(out, Filter{Name: fmt.Sprintf("filters.tsv:%d", f.Line), Raw: f.LinkType == "RAW", Prog: prog})
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
	var runner *fixture.XDPRunner
	if opts.Repeat > 0 {
		runner = fixture.NewXDPRunner(tb)
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
	time := func(prog *ebpf.Program, pkt []byte) (float64, error) {
		return runner.Repeat(prog, pkt, uint32(opts.Repeat))
	}
	if runner != nil {
		res.EmptyNs = make([]float64, len(opts.Packets))
	}

	type acc struct {
		insns, processed []int
		above            [][]float64
	}
	accs := map[*Backend]*acc{
		&res.EBPF: {above: make([][]float64, len(opts.Packets))},
		&res.C:    {above: make([][]float64, len(opts.Packets))},
	}
	res.EBPF.PerFilter = make([]int, len(filters))
	res.C.PerFilter = make([]int, len(filters))
	res.EBPF.PerFilterProcessed = make([]int, len(filters))
	res.EBPF.PerFilterNs = make([][]float64, len(filters))
	res.C.PerFilterNs = make([][]float64, len(filters))
	res.C.PerFilterProcessed = make([]int, len(filters))
	for i, f := range filters {
		res.EBPF.PerFilter[i], res.C.PerFilter[i] = -1, -1
		specs := map[*Backend]*ebpf.ProgramSpec{}
		insns, err := cbpfc.XDPProgram(f.Prog)
		if err != nil {
			res.EBPF.Failed = append(res.EBPF.Failed, fmt.Sprintf("%s: %v", f.Name, err))
		} else {
			specs[&res.EBPF] = &ebpf.ProgramSpec{Name: "cbpfc", Type: ebpf.XDP, License: "GPL", Instructions: insns}
		}
		if cOK[i] {
			specs[&res.C] = cspec.Programs[fmt.Sprintf("f%d", i)]
		}
		// The empty program runs right before the filters, on the same
		// bytes, so that drift over the run cancels out.
		var emptyNs []float64
		if runner != nil {
			for j, pkt := range frames(f.Raw) {
				ns, err := time(empty, pkt)
				if err != nil {
					return nil, err
				}
				emptyNs = append(emptyNs, ns)
				res.EmptyNs[j] += ns / float64(len(filters))
			}
		}
		// Alternate which backend runs first: the first run after the
		// empty program's measurement is a little slower.
		order := []*Backend{&res.EBPF, &res.C}
		if i%2 == 1 {
			order = []*Backend{&res.C, &res.EBPF}
		}
		for _, b := range order {
			spec := specs[b]
			if spec == nil {
				continue
			}
			prog, err := load(spec)
			if err != nil {
				b.Failed = append(b.Failed, fmt.Sprintf("%s: %v", f.Name, err))
				continue
			}
			a := accs[b]
			a.insns = append(a.insns, int(spec.Instructions.Size()/asm.InstructionSize))
			b.PerFilter[i] = a.insns[len(a.insns)-1]
			info, err := prog.Info()
			if err == nil {
				if n, ok := info.VerifiedInstructions(); ok {
					a.processed = append(a.processed, int(n))
					b.PerFilterProcessed[i] = int(n)
				}
			}
			if runner != nil {
				for j, pkt := range frames(f.Raw) {
					ns, err := time(prog, pkt)
					if err != nil {
						prog.Close()
						return nil, fmt.Errorf("%s: %w", f.Name, err)
					}
					a.above[j] = append(a.above[j], ns-emptyNs[j])
					b.PerFilterNs[i] = append(b.PerFilterNs[i], ns-emptyNs[j])
				}
			}
			prog.Close()
		}
	}
	for b, a := range accs {
		b.Insns, b.Processed = stats(a.insns), stats(a.processed)
		for j, v := range a.above {
			if len(v) == 0 {
				continue
			}
			s := slices.Clone(v)
			slices.Sort(s)
			var sum float64
			for _, x := range s {
				sum += x
			}
			b.Timings = append(b.Timings, Timing{Packet: opts.Packets[j].Name, Median: s[len(s)/2], Mean: sum / float64(len(s))})
		}
	}
	return res, nil
}

func load(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgramWithOptions(spec, ebpf.ProgramOptions{LogSizeStart: 1 << 16})
	if err != nil {
		return nil, err
	}
	return prog, nil
}

// Table formats the result as text, one row per backend.
func (r *Result) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d filters; empty XDP program:", r.Filters)
	for i, ns := range r.EmptyNs {
		fmt.Fprintf(&b, " %.1f ns", ns)
		if i < len(r.EmptyNs)-1 {
			b.WriteString(",")
		}
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "%-20s %-40s %-40s %s\n", "backend", "instructions (minimal XDP program)", "verifier processed", "ns/packet above empty (median/mean)")
	for _, be := range []Backend{r.EBPF, r.C} {
		var ts []string
		for _, t := range be.Timings {
			ts = append(ts, fmt.Sprintf("%s %.2f/%.2f", t.Packet, t.Median, t.Mean))
		}
		fmt.Fprintf(&b, "%-20s %-40s %-40s %s\n", be.Name, be.Insns, be.Processed, strings.Join(ts, ", "))
		if len(be.Failed) > 0 {
			fmt.Fprintf(&b, "  %d failed: %s\n", len(be.Failed), strings.Join(be.Failed, "; "))
		}
	}
	return b.String()
}
