package corpusbench

import (
	"math"
	"testing"
)

func TestMeasureCounts(t *testing.T) {
	filters := CorpusFilters(t)
	res, err := Measure(t, filters, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.Table())
	if testing.Verbose() {
		for i, f := range filters {
			t.Logf("%s ebpf %d c %d processed ebpf %d c %d comparable %v", f.Name, res.EBPF.PerFilter[i], res.C.PerFilter[i], res.EBPF.PerFilterProcessed[i], res.C.PerFilterProcessed[i], f.Comparable())
		}
	}
	if res.Comparable == 0 || res.Comparable == len(filters) {
		t.Errorf("%d of %d filters comparable: the corpus has protochain filters, which are not", res.Comparable, len(filters))
	}
	for _, b := range []Backend{res.EBPF, res.C} {
		if len(b.Failed) > 0 {
			t.Errorf("%s: %d filters failed: %v", b.Name, len(b.Failed), b.Failed)
		}
		if b.Insns.Sum == 0 || b.Processed.Sum == 0 {
			t.Errorf("%s: no counts: %+v", b.Name, b)
		}
		if b.ProcessedComparable.N != res.Comparable || b.ProcessedComparable.Sum >= b.Processed.Sum {
			t.Errorf("%s: processed over the comparable filters %+v, over all %+v", b.Name, b.ProcessedComparable, b.Processed)
		}
	}
}

// TestMeasureTiming times a few filters and checks the figures are
// plausible: a filter costs something, and not microseconds.
func TestMeasureTiming(t *testing.T) {
	filters := CorpusFilters(t)
	// Small and large ones.
	var some []Filter
	for _, i := range []int{0, len(filters) / 2, len(filters) - 1} {
		some = append(some, filters[i])
	}
	res, err := Measure(t, some, Options{Packets: DefaultPackets(), Repeat: 9 * 2000, Rounds: 9})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.Table())
	for k, ns := range res.EmptyNs {
		if ns <= 0 || ns > 10000 {
			t.Errorf("empty program on %s: %.1f ns", res.Packets[k], ns)
		}
	}
	for _, b := range []Backend{res.EBPF, res.C} {
		if len(b.Timings) != len(res.Packets) {
			t.Fatalf("%s: %d timings for %d packets", b.Name, len(b.Timings), len(res.Packets))
		}
		for i, ns := range b.PerFilterNs {
			for k, v := range ns {
				// Noise may make a cheap filter look a little cheaper than
				// the empty program, never by much.
				if math.IsNaN(v) || v < -20 || v > 2000 {
					t.Errorf("%s %s on %s: %.2f ns above empty", b.Name, some[i].Name, res.Packets[k], v)
				}
			}
		}
	}
	if len(res.EBPFMinusC) != len(res.Packets) {
		t.Errorf("ebpf - c: %d figures for %d packets", len(res.EBPFMinusC), len(res.Packets))
	}
}

// BenchmarkCorpus times every corpus filter with both backends and logs
// the table; b.N does not matter, the table is the result.
//
//	go test -run '^$' -bench Corpus -benchtime 1x ./internal/corpusbench
func BenchmarkCorpus(b *testing.B) {
	filters := CorpusFilters(b)
	for b.Loop() {
		res, err := Measure(b, filters, Options{Packets: DefaultPackets(), Repeat: 20000})
		if err != nil {
			b.Fatal(err)
		}
		b.Log("\n" + res.Table())
		if len(res.EBPFMinusC) > 0 {
			b.ReportMetric(res.EBPFMinusC[0].Mean, "ebpf-c-ns/pkt")
		}
	}
}
