package corpusbench

import (
	"testing"
)

// TestCompare loads every corpus filter at every link type with both
// backends: all must load, and the sums must be those of the pairs.
func TestCompare(t *testing.T) {
	filters := CorpusFiltersAllLinks(t)
	if len(filters) <= len(CorpusFilters(t)) {
		t.Fatalf("%d filters at all link types, no more than the corpus lines", len(filters))
	}
	v, err := Compare(t, filters)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + v.Summary())
	if testing.Verbose() {
		t.Log("\n" + v.Table())
	}
	if len(v.Failed) > 0 {
		t.Errorf("%d failed: %v", len(v.Failed), v.Failed)
	}
	var sum, sumC int
	for _, p := range v.Pairs {
		if p.EBPF <= 0 || p.C <= 0 || p.EBPFProcessed < p.EBPF/2 || p.CProcessed <= 0 {
			t.Errorf("%s: implausible figures %+v", p.Filter.Name, p)
		}
		sum += p.EBPF
		sumC += p.C
	}
	if sum != v.EBPF || sumC != v.C {
		t.Errorf("sums %d and %d, pairs add up to %d and %d", v.EBPF, v.C, sum, sumC)
	}
}

// BenchmarkVersus prints, for every corpus filter at every link type, the
// eBPF backend's instructions and verifier work next to those of the C
// backend through clang, with the sums, and reports the sums as metrics.
//
//	go test -run '^$' -bench Versus -benchtime 1x ./internal/corpusbench
func BenchmarkVersus(b *testing.B) {
	filters := CorpusFiltersAllLinks(b)
	for b.Loop() {
		v, err := Compare(b, filters)
		if err != nil {
			b.Fatal(err)
		}
		b.Log("\n" + v.Table() + v.Summary())
		b.ReportMetric(float64(v.EBPF), "ebpf-insns")
		b.ReportMetric(float64(v.C), "c-insns")
		b.ReportMetric(float64(v.EBPFProcessed), "ebpf-processed")
		b.ReportMetric(float64(v.CProcessed), "c-processed")
		b.ReportMetric(float64(len(v.ClangWins())), "clang-wins")
	}
}
