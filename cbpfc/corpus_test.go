package cbpfc

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
)

// XDP test runs need at least an Ethernet header and at most what fits in
// one page with the headroom.
const (
	minRunLen = 14
	maxRunLen = 3500
)

type corpusFilter struct {
	fixture.Filter
	prog []bpf.Instruction
}

func compileCorpus(tb testing.TB) []corpusFilter {
	tb.Helper()
	var out []corpusFilter
	for _, f := range fixture.CorpusFilters(tb) {
		lt, err := cbpf.ParseLinkType(f.LinkType)
		if err != nil {
			tb.Fatalf("filters.tsv:%d: %v", f.Line, err)
		}
		prog, err := cbpf.Compile(f.Expr, lt, 262144)
		if err != nil {
			tb.Fatalf("filters.tsv:%d: %s: %v", f.Line, f.Expr, err)
		}
		out = append(out, corpusFilter{Filter: f, prog: prog})
	}
	return out
}

// corpusPackets returns the packets a filter of each link type sees:
// Ethernet captures for EN10MB; raw-IP captures and Ethernet frames from
// their IP header on for RAW. skipped counts packets XDP cannot run.
func corpusPackets(tb testing.TB) (eth, raw [][]byte, skipped int) {
	tb.Helper()
	add := func(dst *[][]byte, p []byte) {
		if len(p) < minRunLen || len(p) > maxRunLen {
			skipped++
			return
		}
		*dst = append(*dst, p)
	}
	for _, c := range fixture.CorpusCaptures(tb) {
		for _, p := range c.Packets {
			switch c.LinkType {
			case layers.LinkTypeEthernet:
				add(&eth, p.Data)
				if off, ok := fixture.IPOffset(p.Data); ok {
					add(&raw, p.Data[off:])
				}
			case 101, 228, 229:
				add(&raw, p.Data)
			}
		}
	}
	return eth, raw, skipped
}

// TestCorpus compiles every corpus filter with both backends, loads them,
// and runs every fitting corpus packet through them in the kernel, against
// libpcap's interpreter on the same cBPF and bytes.
func TestCorpus(t *testing.T) {
	fixture.RequireRoot(t)
	filters := compileCorpus(t)
	eth, raw, skipped := corpusPackets(t)
	r := fixture.NewXDPRunner(t)

	var progs [][]bpf.Instruction
	for _, f := range filters {
		progs = append(progs, f.prog)
	}
	spec, err := cPrograms(t, progs)
	if err != nil {
		t.Fatal(err)
	}

	comparisons := map[string]int{}
	for i, f := range filters {
		name := fmt.Sprintf("filters.tsv:%d %s %q", f.Line, f.LinkType, f.Expr)
		ref, err := cbpf.NewFilter(f.prog)
		if err != nil {
			t.Errorf("%s: libpcap refuses it: %v", name, err)
			continue
		}
		ep, err := loadEBPF(t, f.prog)
		if err != nil {
			t.Errorf("%s: eBPF: %v", name, err)
			continue
		}
		cp, err := ebpf.NewProgram(spec.Programs[fmt.Sprintf("f%d", i)])
		if err != nil {
			ep.Close()
			src, _ := ToC(f.prog, COpts{})
			t.Errorf("%s: C: %v\n%s", name, err, src)
			continue
		}
		mp, err := loadMatch(t, f.prog)
		if err != nil {
			ep.Close()
			cp.Close()
			t.Errorf("%s: eBPF with match labels: %v", name, err)
			continue
		}
		pkts := eth
		if f.LinkType == "RAW" {
			pkts = raw
		}
		bad := 0
		for j, pkt := range pkts {
			want := ref.Run(pkt, len(pkt)) != 0
			ret, err := r.Run(mp, pkt)
			if err != nil {
				t.Fatalf("%s: match: %v", name, err)
			}
			comparisons["match"]++
			if got := ret == 2; got != want {
				if bad++; bad <= 3 {
					t.Errorf("%s: match labels: packet %d (%d bytes): matched %v, libpcap %v", name, j, len(pkt), got, want)
				}
			}
		}
		mp.Close()
		for _, b := range []struct {
			name string
			prog *ebpf.Program
		}{{"ebpf", ep}, {"c", cp}} {
			bad := 0
			for j, pkt := range pkts {
				want := ref.Run(pkt, len(pkt))
				got, err := runValue(r, b.prog, pkt)
				if err != nil {
					t.Fatalf("%s: %s: %v", name, b.name, err)
				}
				comparisons[b.name]++
				if got != want {
					if bad++; bad <= 3 {
						t.Errorf("%s: %s: packet %d (%d bytes): got %#x, libpcap %#x", name, b.name, j, len(pkt), got, want)
					}
				}
			}
		}
		ep.Close()
		cp.Close()
	}
	t.Logf("corpus: %d filters, %d Ethernet and %d IP packets (%d skipped: shorter than %d or longer than %d bytes); comparisons with libpcap: %d eBPF, %d eBPF with match labels, %d C",
		len(filters), len(eth), len(raw), skipped, minRunLen, maxRunLen, comparisons["ebpf"], comparisons["match"], comparisons["c"])
}
