package corpusbench

import "testing"

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
