package corpusbench

import (
	"fmt"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
)

// CorpusFiltersAllLinks compiles every expression of the corpus's
// filters.tsv with libpcap for each link type it compiles for, Ethernet
// (EN10MB) and raw IP (RAW), whichever link type its line names: an
// expression on IP alone is then measured as an L4Drop rule and as an
// xdpcap filter on Ethernet frames. An expression listed twice is taken
// once per link type.
func CorpusFiltersAllLinks(tb testing.TB) []Filter {
	tb.Helper()
	var out []Filter
	seen := map[string]bool{}
	for _, f := range fixture.CorpusFilters(tb) {
		for _, name := range []string{"EN10MB", "RAW"} {
			if seen[name+"\t"+f.Expr] {
				continue
			}
			seen[name+"\t"+f.Expr] = true
			lt, err := cbpf.ParseLinkType(name)
			if err != nil {
				tb.Fatalf("link type %s: %v", name, err)
			}
			prog, err := cbpf.Compile(f.Expr, lt, 262144)
			if err != nil {
				if name == f.LinkType {
					tb.Fatalf("filters.tsv:%d: %s: %v", f.Line, f.Expr, err)
				}
				continue // "ether host" has no raw-IP form, say
			}
			out = append(out, Filter{Name: fmt.Sprintf("filters.tsv:%d %s", f.Line, name), Expr: f.Expr, Raw: name == "RAW", Prog: prog})
		}
	}
	return out
}

// Pair is one filter's figures with both backends: instructions of the
// minimal XDP program and the verifier's processed instructions; -1 where
// the backend failed.
type Pair struct {
	Filter                    Filter
	EBPF, C                   int
	EBPFProcessed, CProcessed int
}

// ClangWins reports whether the C backend through clang did better than the
// eBPF backend on the filter, in instructions or in processed ones.
func (p Pair) ClangWins() bool {
	return p.loaded() && (p.C < p.EBPF || p.CProcessed < p.EBPFProcessed)
}

func (p Pair) loaded() bool {
	return p.EBPF >= 0 && p.C >= 0 && p.EBPFProcessed >= 0 && p.CProcessed >= 0
}

// Versus is the eBPF backend against the C backend through clang
// (-O2 -mcpu=v3), filter by filter.
type Versus struct {
	Pairs []Pair
	// Sums over the filters both backends compiled and loaded.
	EBPF, C, EBPFProcessed, CProcessed int
	// Failed lists the filters a backend failed on, with the error.
	Failed []string
}

// Compare compiles and loads every filter with both backends, without
// timing them, and pairs their figures.
func Compare(tb testing.TB, filters []Filter) (*Versus, error) {
	tb.Helper()
	res, err := Measure(tb, filters, Options{})
	if err != nil {
		return nil, err
	}
	v := &Versus{Failed: append(append([]string(nil), res.EBPF.Failed...), res.C.Failed...)}
	for i, f := range filters {
		p := Pair{
			Filter: f,
			EBPF:   res.EBPF.PerFilter[i], EBPFProcessed: res.EBPF.PerFilterProcessed[i],
			C: res.C.PerFilter[i], CProcessed: res.C.PerFilterProcessed[i],
		}
		v.Pairs = append(v.Pairs, p)
		if p.loaded() {
			v.EBPF += p.EBPF
			v.C += p.C
			v.EBPFProcessed += p.EBPFProcessed
			v.CProcessed += p.CProcessed
		}
	}
	return v, nil
}

// ClangWins returns the filters on which the C backend did better, in
// instructions or in processed ones.
func (v *Versus) ClangWins() []Pair {
	var out []Pair
	for _, p := range v.Pairs {
		if p.ClangWins() {
			out = append(out, p)
		}
	}
	return out
}

// Summary is the sums, how often clang wins, and a row per filter where it
// does.
func (v *Versus) Summary() string {
	var b strings.Builder
	var insns, processed int
	for _, p := range v.Pairs {
		if p.loaded() && p.C < p.EBPF {
			insns++
		}
		if p.loaded() && p.CProcessed < p.EBPFProcessed {
			processed++
		}
	}
	fmt.Fprintf(&b, "eBPF backend against the C backend through clang -O2 -mcpu=v3, %d filters (every corpus expression at each link type it compiles for):\n", len(v.Pairs))
	fmt.Fprintf(&b, "instructions: ebpf %d, c %d; verifier processed: ebpf %d, c %d\n", v.EBPF, v.C, v.EBPFProcessed, v.CProcessed)
	fmt.Fprintf(&b, "clang has fewer instructions on %d filters, fewer processed on %d\n", insns, processed)
	if wins := v.ClangWins(); len(wins) > 0 {
		b.WriteString(pairTable(wins))
	}
	for _, f := range v.Failed {
		fmt.Fprintf(&b, "failed: %s\n", f)
	}
	return b.String()
}

// Table is one row per filter: instructions and processed side by side.
func (v *Versus) Table() string { return pairTable(v.Pairs) }

func pairTable(pairs []Pair) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-26s %6s %6s %9s %9s  %s\n", "filter", "ebpf", "c", "ebpf-proc", "c-proc", "expression")
	for _, p := range pairs {
		mark := ""
		if p.ClangWins() {
			mark = " <"
		}
		fmt.Fprintf(&b, "%-26s %6d %6d %9d %9d  %s%s\n", p.Filter.Name, p.EBPF, p.C, p.EBPFProcessed, p.CProcessed, p.Filter.Expr, mark)
	}
	return b.String()
}
