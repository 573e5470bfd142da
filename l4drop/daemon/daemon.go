// Package daemon keeps an L4Drop rule set loaded on an interface: it loads
// it, reloads it when its source changes, reads its samples and hands them
// to components (pcapng files, sFlow, auto-mitigation), serves Prometheus
// metrics, and switches rules off when they expire.
//
// The daemon needs no clang: Config.Object returns the built ELF, so a
// program that runs prebuilt rule sets links neither cgo nor clang, and
// `l4drop run` builds the rules file in its Object.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/l4drop"
)

// Errors callers branch on.
var (
	// ErrConfig is returned by New for a configuration it cannot run.
	ErrConfig = errors.New("daemon: invalid configuration")
	// ErrState is returned when Start, Reload or Stop is called out of order.
	ErrState = errors.New("daemon: not running")
)

// Config says what the daemon loads, where, and what runs beside it.
type Config struct {
	// Object returns the built rule set (an ELF from l4drop/build). The
	// daemon calls it at start, on Reload, and when a Watch file changes.
	Object func(ctx context.Context) ([]byte, error)
	// Watch are files whose modification triggers a reload, checked every
	// Poll (default 2 s).
	Watch []string
	Poll  time.Duration
	// Load says where and how to load; Load.Iface is required.
	Load l4drop.LoadOptions
	// Metrics is the address to serve Prometheus metrics on (/metrics);
	// "" serves none.
	Metrics string
	// Tick is how often Tickers are woken (default 1 s).
	Tick time.Duration
	// Logger receives the daemon's log; nil discards it.
	Logger *slog.Logger
	// Components run beside the rule set, started in this order.
	Components []Component
}

// Daemon keeps a rule set loaded. Its methods are safe for concurrent use.
type Daemon struct {
	cfg Config
	log *slog.Logger

	reloadMu sync.Mutex // serializes loads
	mu       sync.RWMutex
	handle   *l4drop.Handle
	obj      []byte
	off      []string // rules switched off at run time (expired)
	reader   *l4drop.SampleReader
	mtimes   map[string]time.Time
	started  bool
	stopped  bool

	reloads, fails atomic.Uint64

	ln      net.Listener
	srv     *http.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	running []Component
}

// New checks cfg and returns a daemon ready to Start. It touches nothing.
func New(cfg Config) (*Daemon, error) {
	switch {
	case cfg.Object == nil:
		return nil, fmt.Errorf("%w: no Object", ErrConfig)
	case cfg.Load.Iface == "":
		return nil, fmt.Errorf("%w: no interface (--iface)", ErrConfig)
	case cfg.Poll < 0:
		return nil, fmt.Errorf("%w: poll interval %v: want > 0", ErrConfig, cfg.Poll)
	case cfg.Tick < 0:
		return nil, fmt.Errorf("%w: tick %v: want > 0", ErrConfig, cfg.Tick)
	}
	if cfg.Poll == 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.Tick == 0 {
		cfg.Tick = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	names := map[string]bool{}
	for _, c := range cfg.Components {
		if c == nil {
			return nil, fmt.Errorf("%w: nil component", ErrConfig)
		}
		if names[c.Name()] {
			return nil, fmt.Errorf("%w: two components named %q", ErrConfig, c.Name())
		}
		names[c.Name()] = true
	}
	return &Daemon{cfg: cfg, log: log, mtimes: map[string]time.Time{}}, nil
}

// Logger returns the daemon's logger, for components.
func (d *Daemon) Logger() *slog.Logger { return d.log }

// Config returns the configuration the daemon runs with.
func (d *Daemon) Config() Config { return d.cfg }

// Start listens for metrics, loads the rule set, and starts the components
// and the daemon's goroutines. Everything that can fail before the load
// (the metrics address, the build, every option) fails before the kernel is
// touched: an error then leaves the live rule set as it was. ctx bounds the
// daemon's life: when it ends, the goroutines stop (call Stop to flush).
func (d *Daemon) Start(ctx context.Context) (err error) {
	d.mu.Lock()
	if d.started {
		d.mu.Unlock()
		return fmt.Errorf("daemon: started twice: %w", ErrState)
	}
	d.started = true
	d.mu.Unlock()

	if d.cfg.Metrics != "" {
		if d.ln, err = net.Listen("tcp", d.cfg.Metrics); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	defer func() {
		if err != nil && d.ln != nil {
			d.ln.Close()
		}
	}()
	obj, err := d.cfg.Object(ctx)
	if err != nil {
		return err
	}
	for _, f := range d.cfg.Watch {
		st, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		d.mtimes[f] = st.ModTime()
	}
	if err := d.load(obj); err != nil {
		return err
	}
	ctx, d.cancel = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			d.cancel()
			d.wg.Wait()
			d.closeAll()
		}
	}()
	if d.sinks() != nil {
		// Reading before the components start: samples of the first
		// packets would be lost otherwise.
		if err := d.openReader(); err != nil {
			return err
		}
	}
	for _, c := range d.cfg.Components {
		if err := c.Start(ctx, d); err != nil {
			return fmt.Errorf("start %s: %w", c.Name(), err)
		}
		d.running = append(d.running, c)
	}
	if d.ln != nil {
		d.srv = &http.Server{Handler: d.metricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := d.srv.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("metrics server", "err", err)
			}
		}()
		d.log.Info("serving metrics", "addr", "http://"+d.ln.Addr().String()+"/metrics")
	}
	d.wg.Add(2)
	go func() { defer d.wg.Done(); d.pump(ctx) }()
	go func() { defer d.wg.Done(); d.clock(ctx) }()
	return nil
}

// MetricsAddr returns the address metrics are served on, nil without.
func (d *Daemon) MetricsAddr() net.Addr {
	if d.ln == nil {
		return nil
	}
	return d.ln.Addr()
}

// Run starts the daemon, runs it until ctx ends, and stops it.
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	d.log.Info("stopping; the rule set stays loaded", "unload", "l4drop unload --iface "+d.cfg.Load.Iface)
	return d.Stop()
}

// Stop stops the components and the goroutines, writing the samples
// pending. The rule set stays loaded.
func (d *Daemon) Stop() error {
	d.mu.Lock()
	if !d.started || d.stopped {
		d.mu.Unlock()
		return fmt.Errorf("daemon: stop: %w", ErrState)
	}
	d.stopped = true
	rd := d.reader
	d.mu.Unlock()
	if d.srv != nil {
		d.srv.Close()
	}
	if rd != nil {
		// The pump reads what is pending, then sees ErrFlushed and stops.
		rd.Flush()
	}
	d.cancel()
	d.wg.Wait()
	return d.closeAll()
}

func (d *Daemon) closeAll() error {
	var errs []error
	for i := len(d.running) - 1; i >= 0; i-- {
		if err := d.running[i].Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", d.running[i].Name(), err))
		}
	}
	d.running = nil
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reader != nil {
		d.reader.Close()
		d.reader = nil
	}
	if d.handle != nil {
		d.handle.Close()
		d.handle = nil
	}
	return errors.Join(errs...)
}

// Do runs fn with the loaded rule set; fn must not keep h, which a reload
// closes.
func (d *Daemon) Do(fn func(h *l4drop.Handle) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.handle == nil {
		return fmt.Errorf("daemon: %w", l4drop.ErrNotLoaded)
	}
	return fn(d.handle)
}

// Reload gets the rule set from Config.Object again and loads it. On error
// the loaded set stays as it was.
func (d *Daemon) Reload(ctx context.Context) error {
	obj, err := d.cfg.Object(ctx)
	if err == nil {
		err = d.load(obj)
	}
	if err != nil {
		d.fails.Add(1)
		d.log.Error("reload failed; the loaded rule set stays", "err", err)
	}
	return err
}

// SwitchOff reloads the loaded rule set with the named rules switched off,
// and keeps them off across later reloads (while the rules exist).
func (d *Daemon) SwitchOff(names ...string) error {
	d.mu.Lock()
	obj := d.obj
	old := d.off
	for _, n := range names {
		if !slices.Contains(d.off, n) {
			d.off = append(d.off, n)
		}
	}
	d.mu.Unlock()
	if err := d.load(obj); err != nil {
		d.mu.Lock()
		d.off = old
		d.mu.Unlock()
		d.fails.Add(1)
		return err
	}
	return nil
}

// load loads obj with the configured options and the run-time switches,
// and makes it the daemon's rule set.
func (d *Daemon) load(obj []byte) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	start := time.Now()
	opts := d.cfg.Load
	meta, err := l4drop.ReadMeta(obj)
	if err != nil {
		return err
	}
	d.mu.RLock()
	for _, n := range d.off {
		// A rule switched off at run time that a new file no longer
		// has is no error: it is gone.
		if slices.ContainsFunc(meta.Rules, func(r l4drop.MetaRule) bool { return r.Name == n }) {
			opts.Disable = append(slices.Clone(opts.Disable), n)
			opts.Enable = slices.DeleteFunc(slices.Clone(opts.Enable), func(e string) bool { return e == n })
		}
	}
	d.mu.RUnlock()
	l, err := l4drop.Load(obj, opts)
	if err != nil {
		return err
	}
	l.Close()
	h, err := l4drop.Open(l.Dir)
	if err != nil {
		return err
	}
	d.mu.Lock()
	old, oldReader := d.handle, d.reader
	d.handle, d.obj = h, obj
	if oldReader != nil && sameMap(old.Samples, h.Samples) {
		// The sample map outlived the reload: keep reading it, or the
		// samples in its rings would be lost.
		oldReader.SetRules(h.State)
		oldReader = nil
	} else {
		d.reader = nil
	}
	running := d.running
	d.mu.Unlock()
	if oldReader != nil {
		oldReader.Close() // the pump opens one on the new handle
	}
	if old != nil {
		old.Close()
		d.reloads.Add(1)
	}
	for _, c := range running {
		if r, ok := c.(Reloader); ok {
			r.Reloaded(h.State)
		}
	}
	on := 0
	for _, e := range h.State.Enabled {
		if e {
			on++
		}
	}
	d.log.Info("rule set loaded", "iface", opts.Iface, "rules", len(meta.Rules), "on", on, "programs", len(meta.Programs),
		"replaced", l.Replaced, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (d *Daemon) sinks() []SampleSink {
	var out []SampleSink
	for _, c := range d.cfg.Components {
		if s, ok := c.(SampleSink); ok {
			out = append(out, s)
		}
	}
	return out
}

func (d *Daemon) openReader() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reader != nil || d.handle == nil {
		return nil
	}
	// Wake up per 16 KiB; the pump flushes what is below that.
	rd, err := d.handle.NewSampleReader(0, 16<<10)
	if err != nil {
		return err
	}
	d.reader = rd
	return nil
}

// pump reads samples and hands them to the sinks until ctx ends.
func (d *Daemon) pump(ctx context.Context) {
	sinks := d.sinks()
	if sinks == nil {
		return
	}
	for ctx.Err() == nil {
		if err := d.openReader(); err != nil {
			d.log.Error("sample reader", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		d.mu.RLock()
		rd := d.reader
		d.mu.RUnlock()
		if rd == nil {
			sleep(ctx, time.Second)
			continue
		}
		// A deadline so that samples below the watermark come out.
		rd.SetDeadline(time.Now().Add(500 * time.Millisecond))
		s, err := rd.Read()
		switch {
		case err == nil:
			for _, sk := range sinks {
				if len(sinks) > 1 {
					c := s
					c.Data = slices.Clone(s.Data)
					sk.Sample(c)
				} else {
					sk.Sample(s)
				}
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			rd.Flush()
		case errors.Is(err, l4drop.ErrFlushed):
			d.mu.RLock()
			stopped := d.stopped
			d.mu.RUnlock()
			if stopped {
				return
			}
		case errors.Is(err, io.EOF):
			// Closed by a reload that changed the sample map.
		default:
			d.log.Error("samples", "err", err)
			sleep(ctx, time.Second)
		}
	}
}

// clock wakes the Tickers and polls the watched files.
func (d *Daemon) clock(ctx context.Context) {
	tick := time.NewTicker(d.cfg.Tick)
	defer tick.Stop()
	var poll <-chan time.Time
	if len(d.cfg.Watch) > 0 {
		t := time.NewTicker(d.cfg.Poll)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for _, c := range d.running {
				if t, ok := c.(Ticker); ok {
					t.Tick(now)
				}
			}
		case <-poll:
			for _, f := range d.cfg.Watch {
				st, err := os.Stat(f)
				if err != nil || st.ModTime().Equal(d.mtimes[f]) {
					continue
				}
				d.mtimes[f] = st.ModTime()
				d.log.Info("file changed: reloading", "file", f)
				d.Reload(ctx)
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func sameMap(a, b *ebpf.Map) bool {
	ia, err1 := a.Info()
	ib, err2 := b.Info()
	if err1 != nil || err2 != nil {
		return false
	}
	idA, okA := ia.ID()
	idB, okB := ib.ID()
	return okA && okB && idA == idB
}
