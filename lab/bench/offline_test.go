package bench

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestMeasureOffline runs the offline rows small: both inputs measured in
// every round, with times, the same outputs from both commands, and the
// report's section and target lines. Not timed.
func TestMeasureOffline(t *testing.T) {
	fixture.RequireRoot(t)
	if !Have("tcpdump") {
		if fixture.InCI() {
			t.Fatal("tcpdump missing")
		}
		t.Skip("tcpdump missing")
	}
	tools := Tools{XDPcap: filepath.Join(fixture.BuildCommands(t, "./cmd/xdpcap"), "xdpcap")}
	o := OfflineOptions{Expr: "udp", Rounds: 2, Packets: 20000, Captures: 8}
	res, err := tools.MeasureOffline(context.Background(), t.TempDir(), o, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) != 2 {
		t.Fatalf("%d rows, want 2 (the capture it makes, the corpus captures)", len(res.Rows))
	}
	for i, want := range []struct{ files, packets int }{{1, o.Packets}, {o.Captures, 0}} {
		r := res.Rows[i]
		if r.Err != nil {
			t.Errorf("%s: %v", r.Name, r.Err)
			continue
		}
		if r.Files != want.files || r.Packets != want.packets || r.Bytes <= 0 {
			t.Errorf("%s: %d files, %d packets, %d bytes; want %d files, %d packets", r.Name, r.Files, r.Packets, r.Bytes, want.files, want.packets)
		}
		if len(r.XDPcap) != o.Rounds || len(r.Tcpdump) != o.Rounds {
			t.Errorf("%s: %d and %d rounds, want %d", r.Name, len(r.XDPcap), len(r.Tcpdump), o.Rounds)
		}
		for j := range min(len(r.XDPcap), len(r.Tcpdump)) {
			if r.XDPcap[j].Wall <= 0 || r.Tcpdump[j].Wall <= 0 || r.XDPcap[j].CPU <= 0 || r.Tcpdump[j].CPU <= 0 {
				t.Errorf("%s round %d: times %+v and %+v", r.Name, j, r.XDPcap[j], r.Tcpdump[j])
			}
		}
		if r.Differ != 0 {
			t.Errorf("%s: outputs differ for %d files", r.Name, r.Differ)
		}
		if rt := r.Ratio(); rt.Rounds != o.Rounds || rt.Median <= 0 {
			t.Errorf("%s: ratio %+v", r.Name, rt)
		}
	}
	rep := &Report{Offline: res}
	md := rep.Markdown("")
	for _, want := range []string{"## Offline filtering: xdpcap -r against tcpdump -r", res.Rows[0].Name, res.Rows[1].Name, "a capture for tcpdump"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestOfflineMarkdown renders made-up offline rows: a table row per
// input with the median round and the ratios' quartiles, a failed row as
// failed, and a target line per measured row.
func TestOfflineMarkdown(t *testing.T) {
	times := func(s ...float64) []OfflineTime {
		var ts []OfflineTime
		for _, v := range s {
			d := time.Duration(v * float64(time.Second))
			ts = append(ts, OfflineTime{Wall: d, CPU: d / 2})
		}
		return ts
	}
	o := &Offline{Options: OfflineOptions{Expr: "udp", Rounds: 4}, Rows: []OfflineRow{
		{Name: "1M packets", Files: 1, Packets: 1000000, Bytes: 400e6, XDPcap: times(1, 1.2, 1.5, 3), Tcpdump: times(1, 1, 1, 1)},
		{Name: "10 captures", Files: 10, Bytes: 1e5, XDPcap: times(0.3, 0.3, 0.3, 0.3), Tcpdump: times(0.2, 0.2, 0.2, 0.2)},
		{Name: "broken", Err: errors.New("tcpdump -r x: exit status 1")},
	}}
	md := (&Report{Offline: o}).Markdown("")
	for _, want := range []string{
		"| 1M packets | 400.0 MB | 1.000 s | 1.350 s | 1.35× (1.00–3.00) | 0.500 s | 0.675 s | 1.35× (1.00–3.00) |",
		"| 10 captures | 0.1 MB | 0.200 s | 0.300 s | 1.50× (1.50–1.50) |",
		"| broken | | failed: tcpdump -r x: exit status 1 |",
		"20.0 ms a capture for tcpdump, 30.0 ms for xdpcap",
		"| `xdpcap -r` vs `tcpdump -r`, `udp`, 1M packets: time | 1.35× (1.00–3.00) | ≤ 2× |",
		"| `xdpcap -r` vs `tcpdump -r`, `udp`, 10 captures: time | 1.50× (1.50–1.50) | ≤ 2× |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "broken: time") {
		t.Errorf("a target line for the failed row:\n%s", md)
	}
	if md := (&Report{}).Markdown(""); strings.Contains(md, "Offline filtering") {
		t.Errorf("an offline section with nothing measured:\n%s", md)
	}
}
