package build

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestCorpusFiltersAsRules is a held-out check of #10: every raw-IP
// filter of the corpus (libpcap's own test suite) is a one-rule set, and
// its verdicts on every corpus packet, and on broken copies of a sample
// of them (bad IHL, version, total length, truncated headers), are the
// ones libpcap's interpreter gives over the same bytes from the IP
// header on. Before malformed headers went to the rules, 11 of the 72
// filters that mention the IP header disagreed.
func TestCorpusFiltersAsRules(t *testing.T) {
	fixture.RequireRoot(t)
	corpus := corpusIP(t)
	// Broken copies of every 25th packet: each filter sees them all.
	var sample [][]byte
	for i := 0; i < len(corpus); i += 25 {
		sample = append(sample, corpus[i])
	}
	var sets []propSet
	for _, f := range fixture.CorpusFilters(t) {
		if f.LinkType != "RAW" {
			continue
		}
		sets = append(sets, propSet{
			name:  fmt.Sprintf("f%d", f.Line),
			rules: []string{"expr: " + strconv.Quote(f.Expr)},
			pkts:  sample,
		})
	}
	if len(sets) < 100 {
		t.Fatalf("%d raw-IP filters in the corpus, want its 108", len(sets))
	}
	runs := 0
	for i := 0; i < len(sets); i += 40 {
		runs += checkBatch(t, sets[i:min(i+40, len(sets))], false, corpus)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d filters, %d verdicts, 0 different from libpcap's", len(sets), runs)
}
