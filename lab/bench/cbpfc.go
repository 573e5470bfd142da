package bench

import (
	"testing"

	"github.com/l4drop/l4drop/internal/corpusbench"
)

// CBPFC measures cbpfc's two backends over the corpus filters (instruction
// counts, verifier work, ns/packet above an empty XDP program) with
// internal/corpusbench, and returns its table, followed by the eBPF backend
// against the C backend through clang over every corpus expression at each
// link type: the sums, and the filters where clang does better. It needs
// the source tree: the corpus is found from the working directory up.
func CBPFC(repeat int, logf func(string, ...any)) (string, error) {
	var table string
	err := runTB("cbpfc", logf, func(tb testing.TB) error {
		filters := corpusbench.CorpusFilters(tb)
		res, err := corpusbench.Measure(tb, filters, corpusbench.Options{Packets: corpusbench.DefaultPackets(), Repeat: repeat})
		if err != nil {
			return err
		}
		table = res.Table()
		v, err := corpusbench.Compare(tb, corpusbench.CorpusFiltersAllLinks(tb))
		if err != nil {
			return err
		}
		table += "\n" + v.Summary()
		return nil
	})
	return table, err
}
