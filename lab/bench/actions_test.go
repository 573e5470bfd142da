package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestMeasureActions runs the action rows once, briefly: every row is
// measured (its rule set builds and loads, the flood reaches it) and the
// notes name the ratios. The figures are not judged here (a shared
// machine): make bench reports them.
func TestMeasureActions(t *testing.T) {
	fixture.RequireRoot(t)
	tools := buildCommands(t)
	cfg := DefaultConfig()
	cfg.Duration = 300 * time.Millisecond
	cfg.Rounds = 1
	cfg.CPU = 0
	res, err := tools.MeasureActions(context.Background(), cfg, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Drops) != 3 {
		t.Fatalf("%d rows, want 3", len(res.Drops))
	}
	for _, d := range res.Drops {
		if d.Err != nil || d.Sent == 0 || d.Received == 0 {
			t.Errorf("%s: sent %d, received %d, %v", d.Name, d.Sent, d.Received, d.Err)
		}
	}
	if len(res.Sources) != 2 {
		t.Fatalf("%d per-source rows, want 2", len(res.Sources))
	}
	for _, s := range res.Sources {
		if s.Err != nil || len(s.NS) == 0 || s.Median() <= 0 {
			t.Errorf("%s: %v ns, %v", s.Name, s.NS, s.Err)
		}
	}
	// Every packet came from another source: the table holds them all
	// but those whose set filled up first (about 4 %).
	if n := res.Sources[1].Entries; n < 1<<SourceBits*9/10 {
		t.Errorf("the per-source table held %d sources after the rounds, want about %d", n, 1<<SourceBits)
	}
	notes := res.Notes()
	for _, want := range []string{syncookieRow, ratelimitRow} {
		if !strings.Contains(strings.Join(notes, "\n"), want+": ") {
			t.Errorf("notes lack %q: %q", want, notes)
		}
	}
	t.Logf("%s", strings.Join(notes, "\n"))
}
