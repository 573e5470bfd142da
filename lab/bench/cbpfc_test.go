package bench

import (
	"strings"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestCBPFC runs the cbpfc rows without timing: the counts of both
// backends, then the eBPF backend against the C backend filter by filter.
func TestCBPFC(t *testing.T) {
	fixture.RequireRoot(t)
	table, err := CBPFC(0, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + table)
	for _, want := range []string{"c (clang -mcpu=v3)", "eBPF backend against the C backend", "instructions: ebpf", "clang has fewer instructions on"} {
		if !strings.Contains(table, want) {
			t.Errorf("no %q in the table", want)
		}
	}
	if strings.Contains(table, "failed") {
		t.Errorf("a filter failed to compile or load")
	}
}
