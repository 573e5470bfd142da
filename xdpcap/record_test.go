package xdpcap

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

func TestParseActions(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Action
		err  string
	}{
		{"aborted,drop,pass,tx,redirect", Actions, ""},
		{" drop , XDP_TX", []Action{Drop, TX}, ""},
		{"none", []Action{}, ""},
		{" none ", []Action{}, ""},
		{"drop,none", nil, `unknown XDP action "none"`},
		{"drop,XDPDrop", nil, "XDP_DROP given twice"},
		{"", nil, `unknown XDP action ""`},
	} {
		got, err := ParseActions(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseActions(%q) = %v, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got == nil || !equalActions(got, tc.want) {
			t.Errorf("ParseActions(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func equalActions(a, b []Action) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOutputNames(t *testing.T) {
	for _, tc := range []struct{ path, format, want string }{
		{"x.pcapng", "", "pcapng"},
		{"x.pcap", "", "pcap"},
		{"-", "", "pcap"},
		{"x.pcapng", "pcap", "pcap"},
		{"x.pcap", "pcapng", "pcapng"},
	} {
		if got := OutputFormat(tc.path, tc.format); got != tc.want {
			t.Errorf("OutputFormat(%q, %q) = %q, want %q", tc.path, tc.format, got, tc.want)
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{"/sys/fs/bpf/l4drop/eth0/xdpcap_hook", "l4drop/eth0/xdpcap_hook"},
		{"/sys/fs/bpf/../bpf/hook", "hook"},
		{"/run/hook", "/run/hook"},
		{"hook", filepath.Join(wd, "hook")},
	} {
		if got := HookName(tc.path); got != tc.want {
			t.Errorf("HookName(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestStatsString(t *testing.T) {
	var s Stats
	s.Hooks = make([][NumActions + 1]Counts, 2)
	s.Hooks[0][Pass] = Counts{Seen: 254, Matched: 3}
	s.Hooks[1][Drop] = Counts{Seen: 10, Matched: 10, Lost: 2}
	want := "XDPAborted: 0/0   XDPDrop: 10/10   XDPPass: 254/3   XDPTx: 0/0   XDPRedirect: 0/0   Total: 264/13   Lost: 2   (received/matched packets)"
	if got := s.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	s.Hooks[1][Entry] = Counts{Seen: 5, Matched: 1}
	if got := s.String(); !strings.HasPrefix(got, "Entry: 5/1   XDPAborted: 0/0") || !strings.Contains(got, "Total: 269/14") {
		t.Errorf("with entry counters: %s", got)
	}
}

// collect is a PacketWriter that keeps the packets.
type collect struct {
	pkts    []Packet
	flushes int
}

func (c *collect) WritePacket(p Packet) error {
	p.Data = append([]byte(nil), p.Data...)
	c.pkts = append(c.pkts, p)
	return nil
}

func (c *collect) Flush() error { c.flushes++; return nil }

func TestRecord(t *testing.T) {
	fixture.RequireRoot(t)
	runner := fixture.NewXDPRunner(t)
	bpffs := fixture.BPFFS(t)
	for _, tc := range []struct {
		name      string
		count     int // Record's Count; 0: stopped by an interrupt
		sent      int
		interrupt int
	}{
		{"count", 5, 8, 0},
		{"interrupted", 0, 6, 1},
		{"interrupted twice", 0, 6, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook, err := CreateHook(filepath.Join(bpffs, strings.ReplaceAll(tc.name, " ", "_")))
			if err != nil {
				t.Fatal(err)
			}
			defer hook.Close()
			prog := actionProgram(t, hook, false)
			c, err := Start([]*ebpf.Map{hook}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i := range tc.sent {
				pkt := make([]byte, 64)
				pkt[0], pkt[1] = byte(Drop), byte(i)
				if _, err := runner.Run(prog, pkt); err != nil {
					t.Fatal(err)
				}
			}
			sigs := make(chan os.Signal, 2)
			for range tc.interrupt {
				sigs <- syscall.SIGINT
			}
			w := &collect{}
			res, err := Record(c, w, RecordOptions{Count: tc.count, Interrupt: sigs})
			if err != nil {
				t.Fatal(err)
			}
			hookEmpty(t, hook)
			if res.StatsErr != nil {
				t.Fatal(res.StatsErr)
			}
			if got := res.Stats.Action(Drop); got.Seen != uint64(tc.sent) || got.Matched != uint64(tc.sent) {
				t.Errorf("drop counters %+v, want %d seen and matched", got, tc.sent)
			}
			want := tc.count
			if tc.interrupt == 1 {
				want = tc.sent // detached, then drained
			}
			if tc.interrupt == 2 {
				// Stopped at once: anything from none to all.
				if res.Packets > tc.sent || res.Packets != len(w.pkts) {
					t.Errorf("recorded %d packets, wrote %d; want at most %d, as many written", res.Packets, len(w.pkts), tc.sent)
				}
				return
			}
			if res.Packets != want || len(w.pkts) != want {
				t.Fatalf("recorded %d packets, wrote %d, want %d", res.Packets, len(w.pkts), want)
			}
			for i, p := range w.pkts {
				if p.Action != Drop || p.Data[1] != byte(i) {
					t.Errorf("packet %d: %v, byte %d; want XDPDrop, %d", i, p.Action, p.Data[1], i)
				}
			}
			if _, err := c.Read(); !errors.Is(err, ErrClosed) && !errors.Is(err, io.EOF) {
				t.Errorf("capture still open after Record: %v", err)
			}
		})
	}
}
