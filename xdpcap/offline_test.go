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
	interpreted, pairs, split := 0, 0, 0
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
		for i, p := range set.packets {
			// The first maxPackets, and every packet longer than a page:
			// multi-buffer packets, or too long for one.
			if len(p.Data) < MinPacketLen || i >= maxPackets && len(p.Data) <= os.Getpagesize() {
				continue
			}
			// The kernel first: its runs teach the filter the length of
			// the first buffer.
			kernel, _, kfirst, err := tf.matchKernel(p.Data)
			if errors.Is(err, ErrPacketSize) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			first, known := tf.firstBuffer(len(p.Data))
			if !known {
				t.Fatalf("packet %d (%d bytes): length of the first buffer unknown after a test run", i, len(p.Data))
			}
			res, err := tf.interp.match(p.Data[:first])
			if err != nil {
				t.Errorf("filters.tsv:%d %q packet %d: interpreter: %v", flt.Line, flt.Expr, i, err)
				continue
			}
			pairs++
			if (res != 0) != kernel || kfirst != first {
				t.Errorf("filters.tsv:%d %q packet %d (%d bytes): interpreter %v on %d bytes, kernel %v on %d", flt.Line, flt.Expr, i, len(p.Data), res != 0, first, kernel, kfirst)
			}
			if first < len(p.Data) {
				split++
			}
		}
		tf.Close()
	}
	t.Logf("%d filters interpreted, %d (filter, packet) pairs agree with the kernel, %d of them on multi-buffer packets", interpreted, pairs, split)
	if pairs == 0 || split == 0 {
		t.Fatal("nothing compared, or no multi-buffer packet")
	}
}

// TestMatchChecked makes the interpreter wrong on purpose, in each way
// the kernel's runs check it, and expects Match to say so; and expects a
// packet the kernel refused as too long to be refused at once after.
func TestMatchChecked(t *testing.T) {
	fixture.RequireRoot(t)
	udp := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 53, make([]byte, 18))
	big := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 53, make([]byte, 5000))
	wrongVerdict := func(t *testing.T, tf *TestFilter) {
		t.Helper()
		tcp, err := cbpf.Compile("tcp", cbpf.LinkTypeEthernet, 0)
		if err != nil {
			t.Fatal(err)
		}
		if tf.interp, err = newInterpreter(tcp); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		pkt   []byte
		spoil func(t *testing.T, tf *TestFilter)
	}{
		{"verdict", udp, wrongVerdict},
		{"first buffer", big, func(t *testing.T, tf *TestFilter) {
			if tf.linear == 0 || tf.linear >= len(big) {
				t.Fatalf("first buffer of a test run: %d bytes, want fewer than %d", tf.linear, len(big))
			}
			tf.accepted = len(big)
			tf.linear--
		}},
		// Past the first packets, one in verifyEvery is checked.
		{"sampled", udp, func(t *testing.T, tf *TestFilter) {
			wrongVerdict(t, tf)
			tf.runs = verifyEvery - 1
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			filter, err := cbpf.Compile("udp", cbpf.LinkTypeEthernet, 0)
			if err != nil {
				t.Fatal(err)
			}
			tf, err := NewTestFilter(filter, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer tf.Close()
			// Sound, the filter agrees with the kernel.
			if ok, _, err := tf.Match(tc.pkt); !ok || err != nil {
				t.Fatalf("before: match %v, %v; want a match", ok, err)
			}
			tc.spoil(t, tf)
			if _, _, err := tf.Match(tc.pkt); !errors.Is(err, ErrInterpreter) {
				t.Errorf("after: %v, want ErrInterpreter", err)
			}
		})
	}

	t.Run("too long", func(t *testing.T) {
		tf, err := NewTestFilter(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer tf.Close()
		huge := make([]byte, 1<<17)
		for i := range 2 {
			if _, _, err := tf.Match(huge); !errors.Is(err, ErrPacketSize) {
				t.Fatalf("run %d: %v, want ErrPacketSize", i, err)
			}
			if tf.tooBig != len(huge) {
				t.Errorf("run %d: refused from %d bytes, want %d", i, tf.tooBig, len(huge))
			}
		}
	})
}
