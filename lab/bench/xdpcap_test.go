package bench

import (
	"context"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestXDPcapL4DropCounts is the capture rows' check from outside xdpcap:
// with the flood at full rate (the generator's, and test runs of L4Drop's
// program, which here are far faster), every packet L4Drop's rule counted
// as dropped is a record in xdpcap's file, and xdpcap lost none. Not
// timed: whatever rate this machine reaches, nothing may be lost.
func TestXDPcapL4DropCounts(t *testing.T) {
	fixture.RequireRoot(t)
	tools := buildCommands(t)
	dir := t.TempDir()
	obj, _, err := tools.Build(context.Background(), dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []Capture{tools.XDPcapL4Drop(obj, dir), tools.XDPcapL4DropTestRuns(obj, dir)} {
		t.Run(row.Name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.CaptureDuration = 2 * time.Second
			r, err := row.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("sent %d in %s (%.3f Mpps), rule counted %d, xdpcap saw %d, captured %d, lost %d, file holds %d",
				r.Sent, r.Elapsed.Round(time.Millisecond), mpps(r.Sent, r.Elapsed), r.Counted, r.Seen, r.Captured, r.Lost, r.Records)
			if r.Counted == 0 {
				t.Fatal("the rule counted no packet: no flood?")
			}
			if r.Lost != 0 || r.Records != r.Counted || r.Captured != r.Records {
				t.Errorf("rule counted %d drops, xdpcap captured %d and lost %d, its file holds %d", r.Counted, r.Captured, r.Lost, r.Records)
			}
			if r.Seen < r.Counted {
				t.Errorf("xdpcap's filter saw %d packets, fewer than the %d the rule dropped", r.Seen, r.Counted)
			}
		})
	}
}
