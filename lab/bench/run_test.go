package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/l4drop/l4drop/lab"
)

// TestRunInterrupted runs the whole benchmark with a context already
// cancelled: it must stop before measuring anything, say it was
// interrupted, and leave no working directory behind.
func TestRunInterrupted(t *testing.T) {
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "l4lab-bench-*"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var logged []string
	rep, err := Run(ctx, RunOptions{Config: DefaultConfig(), Tools: Tools{L4Drop: "/nonexistent/l4drop"}, BuildRules: []int{1}},
		func(format string, args ...any) { logged = append(logged, format) })
	if !errors.Is(err, lab.ErrInterrupted) || rep != nil {
		t.Errorf("Run = %v, %v; want nil, lab.ErrInterrupted", rep, err)
	}
	if len(logged) != 0 {
		t.Errorf("logged %q before stopping", logged)
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), "l4lab-bench-*"))
	if len(after) > len(before) {
		t.Errorf("working directories left: %v (before: %v)", after, before)
	}
}
