package cbpfc_test

import (
	"testing"

	"github.com/l4drop/l4drop/internal/corpusbench"
)

// BenchmarkCorpus measures both backends over the corpus filters, side by
// side: instructions of the minimal XDP program, verifier-processed
// instructions, and nanoseconds per packet above an empty XDP program.
func BenchmarkCorpus(b *testing.B) {
	filters := corpusbench.CorpusFilters(b)
	for b.Loop() {
		res, err := corpusbench.Measure(b, filters, corpusbench.Options{Packets: corpusbench.DefaultPackets(), Repeat: 50000})
		if err != nil {
			b.Fatal(err)
		}
		b.Log("\n" + res.Table())
		for _, be := range []corpusbench.Backend{res.EBPF, res.C} {
			name := map[string]string{res.EBPF.Name: "ebpf", res.C.Name: "c"}[be.Name]
			b.ReportMetric(float64(be.Insns.Median), name+"-insns-median")
			b.ReportMetric(float64(be.Insns.Sum), name+"-insns-sum")
			b.ReportMetric(float64(be.Processed.Sum), name+"-processed-sum")
			for _, t := range be.Timings {
				b.ReportMetric(t.Mean, name+"-ns-above-empty-"+t.Packet)
			}
		}
	}
}
