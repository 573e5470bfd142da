package corpusbench

import "testing"

func BenchmarkCorpus(b *testing.B) {
	filters := CorpusFilters(b)
	for b.Loop() {
		res, err := Measure(b, filters, Options{Packets: DefaultPackets(), Repeat: 50000})
		if err != nil {
			b.Fatal(err)
		}
		b.Log("\n" + res.Table())
		b.ReportMetric(float64(res.EBPF.Insns.Median), "ebpf-insns-median")
		b.ReportMetric(float64(res.C.Insns.Median), "c-insns-median")
	}
}

func TestMeasureCounts(t *testing.T) {
	filters := CorpusFilters(t)
	res, err := Measure(t, filters, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.Table())
	if testing.Verbose() {
		for i, f := range filters {
			t.Logf("%s ebpf %d c %d processed ebpf %d c %d", f.Name, res.EBPF.PerFilter[i], res.C.PerFilter[i], res.EBPF.PerFilterProcessed[i], res.C.PerFilterProcessed[i])
		}
	}
	for _, b := range []Backend{res.EBPF, res.C} {
		if len(b.Failed) > 0 {
			t.Errorf("%s: %d filters failed: %v", b.Name, len(b.Failed), b.Failed)
		}
		if b.Insns.Sum == 0 || b.Processed.Sum == 0 {
			t.Errorf("%s: no counts: %+v", b.Name, b)
		}
	}
}
