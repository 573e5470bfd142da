package bench

import (
	"context"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestXDPcapL4DropCounts is the capture rows' check from outside xdpcap:
// L4Drop's rule counter against the records in xdpcap's file. With the
// generator's flood at its full rate, every packet the rule dropped is in
// the file: nothing lost. With test runs of L4Drop's program as the flood,
// whose rate is bounded by nothing but the CPU, a reader starved by the
// machine's other work may fall behind: every dropped packet is then in
// the file or in xdpcap's lost count, none unaccounted. Not timed.
func TestXDPcapL4DropCounts(t *testing.T) {
	fixture.RequireRoot(t)
	tools := buildCommands(t)
	dir := t.TempDir()
	obj, _, err := tools.Build(context.Background(), dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		row      Capture
		lossless bool
	}{
		{tools.XDPcapL4Drop(obj, dir), true},
		{tools.XDPcapL4DropTestRuns(obj, dir), false},
	} {
		t.Run(tt.row.Name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.CaptureDuration = 2 * time.Second
			r, err := tt.row.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("sent %d in %s (%.3f Mpps), rule counted %d, xdpcap saw %d, captured %d, lost %d, file holds %d; reader on a CPU %s, waiting for one %s",
				r.Sent, r.Elapsed.Round(time.Millisecond), mpps(r.Sent, r.Elapsed), r.Counted, r.Seen, r.Captured, r.Lost, r.Records,
				r.ReaderCPU.Round(time.Millisecond), r.ReaderWaited.Round(time.Millisecond))
			if r.Counted == 0 {
				t.Fatal("the rule counted no packet: no flood?")
			}
			if r.Records != r.Captured || r.Records+r.Lost != r.Counted {
				t.Errorf("rule counted %d drops; xdpcap captured %d and lost %d; its file holds %d", r.Counted, r.Captured, r.Lost, r.Records)
			}
			if tt.lossless && r.Lost != 0 {
				t.Errorf("xdpcap lost %d of %d packets", r.Lost, r.Counted)
			}
			if r.Seen < r.Counted {
				t.Errorf("xdpcap's filter saw %d packets, fewer than the %d the rule dropped", r.Seen, r.Counted)
			}
		})
	}
}
