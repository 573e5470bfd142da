package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/lab/scenario"
)

func TestAutoSummary(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	run := func(name string, ttm *float64, dropped float64, legit uint64) AutoRun {
		return AutoRun{Result: scenario.Result{Scenario: name, TimeToMitigate: ttm, AttackDroppedPct: dropped, LegitDropped: legit, ExpiredAfter: f(2)}}
	}
	tests := []struct {
		name                        string
		runs                        []AutoRun
		median, worst, minDrop      float64
		legit                       uint64
		ok                          bool
		wantInTable, wantNotInTable string
	}{
		{"odd", []AutoRun{run("a", f(0.3), 100, 0), run("b", f(0.9), 99.5, 0), run("c", f(0.5), 100, 0)}, 0.5, 0.9, 99.5, 0, true, "median time to mitigate 0.50 s", ""},
		{"even", []AutoRun{run("a", f(0.25), 100, 0), run("b", f(0.75), 100, 3)}, 0.5, 0.75, 100, 3, true, "3 legitimate packets", ""},
		{"never mitigated", []AutoRun{run("a", f(0.2), 100, 0), run("b", nil, 10, 0)}, 0, 0, 0, 0, false, "| b | 0 | never |", "Over the"},
		{"failed", []AutoRun{run("a", f(0.2), 100, 0), {Result: scenario.Result{Scenario: "b"}, Err: errors.New("no lab")}}, 0, 0, 0, 0, false, "| b | failed: no lab |", "Over the"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &AutoMitigation{Options: scenario.Options{}.WithDefaults(), Runs: tt.runs}
			med, worst, minDrop, legit, ok := a.Summary()
			if ok != tt.ok || ok && (med != tt.median || worst != tt.worst || minDrop != tt.minDrop || legit != tt.legit) {
				t.Errorf("Summary() = %v %v %v %v %v, want %v %v %v %v %v", med, worst, minDrop, legit, ok, tt.median, tt.worst, tt.minDrop, tt.legit, tt.ok)
			}
			var b strings.Builder
			a.markdown(&b)
			if !strings.Contains(b.String(), tt.wantInTable) || tt.wantNotInTable != "" && strings.Contains(b.String(), tt.wantNotInTable) {
				t.Errorf("table lacks %q or has %q:\n%s", tt.wantInTable, tt.wantNotInTable, b.String())
			}
		})
	}
}

// TestHeldOut: one held-out case, end to end against `l4drop run --auto`
// at 200 kpps of attack; BenchmarkHeldOut runs them all.
func TestHeldOut(t *testing.T) {
	fixture.RequireRoot(t)
	tools := buildCommands(t)
	o := HeldOutOptions{Cases: []HeldOutCase{heldOutCase(t, "udp-game-v6")}, Learn: 4500 * time.Millisecond, Crowd: time.Second,
		Attack: 2 * time.Second, JudgePackets: 10000}
	h := MeasureHeldOut(context.Background(), tools, t.TempDir(), o, t.Logf)
	var b strings.Builder
	h.Markdown(&b)
	t.Log("\n" + b.String())
	if len(h.Runs) != 1 {
		t.Fatalf("%d runs", len(h.Runs))
	}
	r := h.Runs[0]
	if len(r.Sets) == 0 || r.LegitSent == 0 || r.AttackPPS < 100000 {
		t.Fatalf("run %+v: no rule set, no legitimate traffic or too slow an attack", r)
	}
	for _, f := range r.Failures(h.Options.Expire) {
		t.Error(f)
	}
	// make bench's report: a section of its own and a line against the
	// targets.
	md := (&Report{Config: DefaultConfig(), HeldOut: h}).Markdown("")
	for _, want := range []string{"## Auto-mitigation: held-out check", "| udp-game-v6 |", "| held-out auto check, 1 case at 200000 pps"} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q:\n%s", want, md)
		}
	}
}

// TestUnlikeAttack: a users' SYN whose random IP id happens to be the
// attack's fixed one is a packet the attack could have sent; the held-out
// check leaves it out (and counts it), and keeps the same SYN with any
// other IP id.
func TestUnlikeAttack(t *testing.T) {
	c := heldOutCase(t, "syn-fixed-ipid")
	attackT, err := parseTemplates(c.Attack)
	if err != nil {
		t.Fatal(err)
	}
	legitT, err := parseTemplates(c.Legit[:1])
	if err != nil {
		t.Fatal(err)
	}
	frames := lab.Frames(legitT, 1, 2)
	const ipid = 14 + 4 // Ethernet, then the IPv4 header's identification
	binary.BigEndian.PutUint16(frames[0][ipid:], 1234)
	binary.BigEndian.PutUint16(frames[1][ipid:], 1235)
	kept, n := unlike(slices.Clone(frames), lab.NewMatcher(attackT))
	if n != 1 || len(kept) != 1 || binary.BigEndian.Uint16(kept[0][ipid:]) != 1235 {
		t.Errorf("left out %d, kept %d frames; want the one with the attack's IP id left out", n, len(kept))
	}
}

func heldOutCase(t *testing.T, name string) HeldOutCase {
	t.Helper()
	for _, c := range HeldOut {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no held-out case %q", name)
	return HeldOutCase{}
}

// BenchmarkHeldOut runs every held-out case (b.N is ignored: the run is
// the measurement) and reports the median and largest time to mitigate
// and the goals missed. HELDOUT_SEED sets the seed.
func BenchmarkHeldOut(b *testing.B) {
	fixture.RequireRoot(b)
	bin := fixture.BuildCommands(b, "./cmd/l4drop")
	tools := Tools{L4Drop: filepath.Join(bin, "l4drop")}
	o := HeldOutOptions{}
	if s := os.Getenv("HELDOUT_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			b.Fatalf("HELDOUT_SEED: %v", err)
		}
		o.Seed = seed
	}
	for range b.N {
		h := MeasureHeldOut(context.Background(), tools, b.TempDir(), o, b.Logf)
		var sb strings.Builder
		h.Markdown(&sb)
		b.Log("\n" + sb.String())
		med, worst, fails := h.Summary()
		b.ReportMetric(med, "ttm-median-s")
		b.ReportMetric(worst, "ttm-max-s")
		b.ReportMetric(float64(len(fails)), "goals-missed")
	}
}
