package xdpcap

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/cbpfc"
	"github.com/l4drop/l4drop/internal/fixture"
)

// corpusSet is the corpus packets of one link type merged into one pcap
// file, packet i stamped with second i so tcpdump's output names them.
type corpusSet struct {
	path    string
	packets []fixture.CapturedPacket
}

func mergeCorpus(t testing.TB, lt layers.LinkType) *corpusSet {
	t.Helper()
	set := &corpusSet{path: filepath.Join(t.TempDir(), fmt.Sprintf("corpus-%d.pcap", lt))}
	for _, c := range fixture.CorpusCaptures(t) {
		if c.LinkType == lt {
			set.packets = append(set.packets, c.Packets...)
		}
	}
	f, err := os.Create(set.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(DefaultSnapLen, lt); err != nil {
		t.Fatal(err)
	}
	for i, p := range set.packets {
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(int64(i+1), 0), CaptureLength: len(p.Data), Length: max(p.Length, len(p.Data))}
		if err := w.WritePacket(ci, p.Data); err != nil {
			t.Fatal(err)
		}
	}
	return set
}

// tcpdumpMatches runs `tcpdump -r IN -w OUT EXPR` and returns the indexes
// of the packets it wrote.
func tcpdumpMatches(t testing.TB, set *corpusSet, expr string) (map[int]bool, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tcpdump.pcap")
	cmd := exec.Command("tcpdump", "-n", "-r", set.path, "-w", out, expr)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tcpdump %q: %w: %s", expr, err, strings.TrimSpace(string(b)))
	}
	c, err := fixture.ReadCapture(out)
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]bool{}
	for _, p := range c.Packets {
		m[int(p.Time.Unix())-1] = true
	}
	return m, nil
}

// usesLen reports whether a filter reads the packet length, which the
// kernel knows as the captured length and tcpdump as the length on the
// wire.
func usesLen(prog []bpf.Instruction) bool {
	for _, in := range prog {
		if e, ok := in.(bpf.LoadExtension); ok && e.Num == bpf.ExtLen {
			return true
		}
	}
	return false
}

// TestOfflineAgreesWithTcpdump runs corpus filters over the corpus packets
// with TestFilter and compares packet for packet with tcpdump -r -w.
func TestOfflineAgreesWithTcpdump(t *testing.T) {
	fixture.RequireRoot(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		if fixture.InCI() {
			t.Fatal("tcpdump missing")
		}
		t.Skip("tcpdump missing")
	}
	sets := map[string]*corpusSet{
		"EN10MB": mergeCorpus(t, layers.LinkTypeEthernet),
		"RAW":    mergeCorpus(t, layers.LinkTypeRaw),
	}
	filters := fixture.CorpusFilters(t)
	// Every filter in full runs; in -short every fourth.
	step := 1
	if testing.Short() {
		step = 4
	}
	compared, sized, lenDiff, bigDiff := 0, 0, 0, 0
	for fi := 0; fi < len(filters); fi += step {
		flt := filters[fi]
		set := sets[flt.LinkType]
		if set == nil || len(set.packets) == 0 {
			continue
		}
		lt, err := cbpf.ParseLinkType(flt.LinkType)
		if err != nil {
			t.Fatal(err)
		}
		prog, err := cbpf.Compile(flt.Expr, lt, DefaultSnapLen)
		if err != nil {
			t.Fatalf("filters.tsv:%d: %v", flt.Line, err)
		}
		want, err := tcpdumpMatches(t, set, flt.Expr)
		if err != nil {
			// Some expressions only make sense on a live interface.
			t.Logf("filters.tsv:%d: skipped, %v", flt.Line, err)
			continue
		}
		tf, err := NewTestFilter(prog, 0)
		if err != nil {
			t.Errorf("filters.tsv:%d %q: %v", flt.Line, flt.Expr, err)
			continue
		}
		for i, p := range set.packets {
			got, captured, err := tf.Match(p.Data)
			if errors.Is(err, ErrPacketSize) {
				sized++
				continue
			}
			if err != nil {
				t.Fatalf("filters.tsv:%d packet %d: %v", flt.Line, i, err)
			}
			compared++
			if got && string(captured.Data) != string(p.Data) {
				t.Errorf("filters.tsv:%d packet %d: captured bytes differ from the packet", flt.Line, i)
			}
			if got == want[i] {
				continue
			}
			// Where XDP cannot see what tcpdump sees, differences are expected.
			if p.Length > len(p.Data) && usesLen(prog) {
				lenDiff++
				continue
			}
			if len(p.Data) > 3500 {
				bigDiff++
				continue
			}
			t.Errorf("filters.tsv:%d %q: packet %d (%d of %d bytes): xdpcap %v, tcpdump %v",
				flt.Line, flt.Expr, i, len(p.Data), p.Length, got, want[i])
		}
		tf.Close()
	}
	t.Logf("%d (filter, packet) pairs agree with tcpdump; where XDP cannot see what tcpdump sees: %d pairs of packets of a size XDP never handles skipped, %d differ on len of truncated packets, %d on bytes past the first buffer",
		compared-lenDiff-bigDiff, sized, lenDiff, bigDiff)
	if compared == 0 {
		t.Fatal("nothing compared")
	}
}

// TestInterpreterAgreesWithKernel runs every corpus filter over corpus
// packets in xdpcap's interpreter and in the kernel (the capture program
// by test run): they must agree on every packet, and the interpreter must
// take the filters that read only the packet.
func TestInterpreterAgreesWithKernel(t *testing.T) {
	fixture.RequireRoot(t)
	sets := map[string]*corpusSet{
		"EN10MB": mergeCorpus(t, layers.LinkTypeEthernet),
		"RAW":    mergeCorpus(t, layers.LinkTypeRaw),
	}
	const maxPackets = 1500
	interpreted, pairs := 0, 0
	for _, flt := range fixture.CorpusFilters(t) {
		set := sets[flt.LinkType]
		if set == nil {
			continue
		}
		lt, err := cbpf.ParseLinkType(flt.LinkType)
		if err != nil {
			t.Fatal(err)
		}
		prog, err := cbpf.Compile(flt.Expr, lt, DefaultSnapLen)
		if err != nil {
			t.Fatalf("filters.tsv:%d: %v", flt.Line, err)
		}
		tf, err := NewTestFilter(prog, 0)
		if err != nil {
			t.Fatalf("filters.tsv:%d %q: %v", flt.Line, flt.Expr, err)
		}
		if tf.interp == nil {
			if !cbpfc.UsesContext(prog) {
				t.Errorf("filters.tsv:%d %q: the interpreter does not take it", flt.Line, flt.Expr)
			}
			tf.Close()
			continue
		}
		interpreted++
		for i, p := range set.packets[:min(len(set.packets), maxPackets)] {
			if len(p.Data) < MinPacketLen || len(p.Data) > interpMaxLen {
				continue
			}
			res, err := tf.interp.match(p.Data)
			if err != nil {
				t.Errorf("filters.tsv:%d %q packet %d: interpreter: %v", flt.Line, flt.Expr, i, err)
				continue
			}
			kernel, _, err := tf.matchKernel(p.Data)
			if err != nil {
				t.Fatal(err)
			}
			pairs++
			if (res != 0) != kernel {
				t.Errorf("filters.tsv:%d %q packet %d: interpreter %v, kernel %v", flt.Line, flt.Expr, i, res != 0, kernel)
			}
		}
		tf.Close()
	}
	t.Logf("%d filters interpreted, %d (filter, packet) pairs agree with the kernel", interpreted, pairs)
	if pairs == 0 {
		t.Fatal("nothing compared")
	}
}
