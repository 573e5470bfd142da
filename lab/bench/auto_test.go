package bench

import (
	"errors"
	"strings"
	"testing"

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
