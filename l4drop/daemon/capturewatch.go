package daemon

import (
	"context"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/xdpcap"
)

// CaptureWatch removes the filters a capture killed without cleaning up
// (kill -9, a crash) left in the rule set's xdpcap hook. Until then every
// packet runs them, and the program that calls the hook stays attached in
// place of its quiet twin (docs/xdpcap.md): a few ns a packet, and more if
// the filters match. A filter in the hook whose hook lock no process holds
// is such a leftover; a running capture holds the lock, and is left alone.
// It looks at every tick of the daemon: a few map lookups.
type CaptureWatch struct {
	d *Daemon
}

// NewCaptureWatch returns a CaptureWatch.
func NewCaptureWatch() *CaptureWatch { return &CaptureWatch{} }

// Name implements Component.
func (w *CaptureWatch) Name() string { return "capture-watch" }

// Start implements Component.
func (w *CaptureWatch) Start(_ context.Context, d *Daemon) error {
	w.d = d
	return nil
}

// Stop implements Component.
func (w *CaptureWatch) Stop() error { return nil }

// Tick implements Ticker.
func (w *CaptureWatch) Tick(time.Time) {
	var dir string
	if err := w.d.Do(func(h *l4drop.Handle) error { dir = h.Dir; return nil }); err != nil {
		return
	}
	n, err := clearLeftFilters(filepath.Join(dir, l4drop.PinHook))
	switch {
	case err != nil:
		w.d.Logger().Warn("capture-watch: checking the xdpcap hook failed", "err", err)
	case n > 0:
		w.d.Logger().Info("capture-watch: removed the filters a killed capture left in the xdpcap hook", "filters", n)
	}
}

// clearLeftFilters removes the filters no running capture owns from the
// hook pinned at path, and returns how many it removed.
func clearLeftFilters(path string) (int, error) {
	hook, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return 0, err
	}
	defer hook.Close()
	return xdpcap.ClearStale(hook)
}
