package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
)

// streamSamples writes samples as pcapng to out ("-": stdout) until
// interrupted or count samples.
func streamSamples(h *l4drop.Handle, out string, count int, iface string) error {
	var w io.Writer = os.Stdout
	if out != "-" {
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	sw, err := l4drop.NewSampleWriter(bw, iface, h.State.Meta.Snaplen)
	if err != nil {
		return err
	}
	// Wake up per 16 KiB, and flush what is below that twice a second.
	rd, err := h.NewSampleReader(0, 16<<10)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGPIPE)
	defer stop()
	defer rd.Close()
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				// Read returns what is pending, then ErrFlushed.
				rd.Flush()
				return
			case <-t.C:
				rd.Flush()
			}
		}
	}()
	n := 0
	var lastFlush time.Time
	for count == 0 || n < count {
		s, err := rd.Read()
		if errors.Is(err, l4drop.ErrFlushed) {
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := sw.Write(s); err != nil {
			return err
		}
		n++
		if time.Since(lastFlush) > 200*time.Millisecond {
			if err := flushAll(sw, bw); err != nil {
				return err
			}
			lastFlush = time.Now()
		}
	}
	stop()
	if err := flushAll(sw, bw); err != nil && !errors.Is(err, syscall.EPIPE) {
		return err
	}
	fmt.Fprintf(os.Stderr, "%d samples\n", n)
	return nil
}

func flushAll(sw *l4drop.SampleWriter, bw *bufio.Writer) error {
	if err := sw.Flush(); err != nil {
		return err
	}
	return bw.Flush()
}

// daemon is `l4drop run`: it keeps a rule set loaded from a file, reloads
// it when the file changes or on SIGHUP, writes samples to rotating pcapng
// files and serves metrics.
type daemon struct {
	log    *slog.Logger
	rules  string
	opts   l4drop.LoadOptions
	dir    string
	rotate time.Duration
	keep   int

	mu       sync.Mutex
	handle   *l4drop.Handle
	reader   *l4drop.SampleReader
	reloads  int
	fails    int
	stopping bool
}

func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run RULES.yaml --iface IF [flags]", flag.ContinueOnError)
	ifl := addIface(fs)
	loc := fs.String("location", "", "location: switches on the rules listing it")
	mode := fs.String("mode", "", "native or generic (default: what the driver supports)")
	next := fs.String("next", "", "pinned XDP program to hand passed packets to")
	dir := fs.String("dir", "", "directory for rotating pcapng sample files (empty: no files)")
	rotate := fs.Duration("rotate", time.Minute, "start a new sample file this often")
	keep := fs.Int("keep", 60, "sample files to keep")
	metrics := fs.String("metrics", "127.0.0.1:9786", "address for Prometheus metrics (/metrics)")
	poll := fs.Duration("poll", 2*time.Second, "how often to check the rules file for changes")
	pos, err := parse(fs, args, 1, "l4drop run rules.yaml --iface eth0 --location ams --dir /var/lib/l4drop")
	if err != nil {
		return err
	}
	if *ifl.iface == "" {
		return errors.New("--iface is required")
	}
	d := &daemon{
		log: slog.New(slog.NewTextHandler(os.Stderr, nil)), rules: pos[0], dir: *dir, rotate: *rotate, keep: *keep,
		opts: l4drop.LoadOptions{Iface: *ifl.iface, Netns: *ifl.netns, Root: *ifl.root, Location: *loc, Mode: *mode, Next: *next},
	}
	if d.dir != "" {
		if err := os.MkdirAll(d.dir, 0o755); err != nil {
			return err
		}
	}
	mtime, err := d.reload()
	if err != nil {
		return err
	}
	if d.dir != "" {
		// Reading before saying we are up: samples of the first packets
		// would be lost otherwise.
		if d.reader, err = d.handle.NewSampleReader(0, 16<<10); err != nil {
			return fmt.Errorf("sample reader: %w", err)
		}
	}
	ln, err := net.Listen("tcp", *metrics)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(d.serveMetrics), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	d.log.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")

	loopDone := make(chan struct{})
	go func() {
		d.sampleLoop()
		close(loopDone)
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, os.Interrupt, syscall.SIGTERM)
	tick := time.NewTicker(*poll)
	defer tick.Stop()
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				d.log.Info("SIGHUP: reloading")
				if m, err := d.reload(); err == nil {
					mtime = m
				}
				continue
			}
			d.log.Info("stopping; the rule set stays loaded", "signal", s.String(), "unload", "l4drop unload --iface "+d.opts.Iface)
			srv.Close()
			d.mu.Lock()
			d.stopping = true
			rd := d.reader
			d.mu.Unlock()
			if rd != nil {
				// The sample loop writes what is pending, then stops.
				rd.Flush()
			}
			select {
			case <-loopDone:
			case <-time.After(5 * time.Second):
			}
			if rd != nil {
				rd.Close()
			}
			return nil
		case <-tick.C:
			st, err := os.Stat(d.rules)
			if err == nil && !st.ModTime().Equal(mtime) {
				d.log.Info("rules file changed: reloading", "file", d.rules)
				mtime = st.ModTime()
				d.reload()
			}
		}
	}
}

// reload builds and loads the rules file; on error the loaded set stays.
func (d *daemon) reload() (time.Time, error) {
	st, err := os.Stat(d.rules)
	if err != nil {
		d.fail(err)
		return time.Time{}, err
	}
	start := time.Now()
	rs, err := build.LoadRuleSet(d.rules)
	if err != nil {
		d.fail(err)
		return st.ModTime(), err
	}
	obj, gen, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		d.fail(err)
		return st.ModTime(), err
	}
	l, err := l4drop.Load(obj, d.opts)
	if err != nil {
		d.fail(err)
		return st.ModTime(), err
	}
	l.Close()
	h, err := l4drop.Open(l.Dir)
	if err != nil {
		d.fail(err)
		return st.ModTime(), err
	}
	d.mu.Lock()
	old, oldReader := d.handle, d.reader
	d.handle = h
	d.reloads++
	if oldReader != nil && sameMap(old.Samples, h.Samples) {
		// The sample map outlived the reload: keep reading it, or the
		// samples in its rings would be lost.
		oldReader.SetRules(h.State)
		oldReader = nil
	} else {
		d.reader = nil
	}
	d.mu.Unlock()
	if oldReader != nil {
		oldReader.Close() // the sample loop reopens on the new handle
	}
	if old != nil {
		old.Close()
	}
	d.log.Info("rule set loaded", "iface", d.opts.Iface, "rules", len(gen.Meta.Rules), "programs", len(gen.Meta.Programs),
		"replaced", l.Replaced, "took", time.Since(start).Round(time.Millisecond))
	return st.ModTime(), nil
}

func (d *daemon) fail(err error) {
	d.mu.Lock()
	d.fails++
	d.mu.Unlock()
	d.log.Error("reload failed; the loaded rule set stays", "err", err)
}

// sampleLoop writes samples to files in d.dir, a new file every d.rotate.
func (d *daemon) sampleLoop() {
	if d.dir == "" {
		return
	}
	for {
		d.mu.Lock()
		if d.stopping {
			d.mu.Unlock()
			return
		}
		h := d.handle
		rd := d.reader
		if rd == nil {
			var err error
			rd, err = h.NewSampleReader(0, 16<<10)
			if err != nil {
				d.mu.Unlock()
				d.log.Error("sample reader", "err", err)
				time.Sleep(time.Second)
				continue
			}
			d.reader = rd
		}
		d.mu.Unlock()
		err := d.writeFiles(h, rd)
		d.mu.Lock()
		stopping := d.stopping
		d.mu.Unlock()
		if stopping {
			return
		}
		if err != nil {
			d.log.Error("samples", "err", err)
			time.Sleep(time.Second)
		}
	}
}

type sampleFile struct {
	f  *os.File
	bw *bufio.Writer
	sw *l4drop.SampleWriter
}

func (d *daemon) newFile(h *l4drop.Handle) (*sampleFile, error) {
	name := filepath.Join(d.dir, fmt.Sprintf("samples-%s.pcapng", time.Now().UTC().Format("20060102T150405.000")))
	f, err := os.Create(name)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriter(f)
	sw, err := l4drop.NewSampleWriter(bw, d.opts.Iface, h.State.Meta.Snaplen)
	if err != nil {
		f.Close()
		return nil, err
	}
	d.prune()
	return &sampleFile{f, bw, sw}, nil
}

func (sf *sampleFile) close() error {
	err := errors.Join(sf.sw.Flush(), sf.bw.Flush())
	return errors.Join(err, sf.f.Close())
}

// prune keeps the newest d.keep sample files.
func (d *daemon) prune() {
	files, _ := filepath.Glob(filepath.Join(d.dir, "samples-*.pcapng"))
	sort.Strings(files)
	for len(files) > d.keep {
		os.Remove(files[0])
		files = files[1:]
	}
}

// writeFiles writes until the reader is closed (reload or exit).
func (d *daemon) writeFiles(h *l4drop.Handle, rd *l4drop.SampleReader) error {
	sf, err := d.newFile(h)
	if err != nil {
		return err
	}
	defer func() { sf.close() }()
	started := time.Now()
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				rd.Flush()
			}
		}
	}()
	for {
		// A deadline so that rotation happens when traffic is idle too.
		rd.SetDeadline(time.Now().Add(time.Second))
		s, err := rd.Read()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, l4drop.ErrFlushed):
			d.mu.Lock()
			stopping := d.stopping
			d.mu.Unlock()
			if stopping {
				return nil
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
		case err != nil:
			return err
		default:
			if err := sf.sw.Write(s); err != nil {
				return err
			}
		}
		if time.Since(started) >= d.rotate {
			if err := sf.close(); err != nil {
				return err
			}
			if sf, err = d.newFile(h); err != nil {
				return err
			}
			started = time.Now()
		}
	}
}

// serveMetrics writes the Prometheus text exposition format.
func (d *daemon) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/metrics" {
		http.NotFound(w, r)
		return
	}
	d.mu.Lock()
	h, reloads, fails := d.handle, d.reloads, d.fails
	d.mu.Unlock()
	st, err := h.Status(0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	metric := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	labels := func(r l4drop.RuleStatus) string {
		return fmt.Sprintf(`iface=%q,rule=%q,action=%q,enabled="%v"`, st.Iface, r.Name, r.Action, r.Enabled)
	}
	all := append(st.Rules, st.Unmatched)
	metric("l4drop_rule_packets_total", "counter", "Packets matched per rule (rule=\"(no rule)\": none matched).")
	for _, r := range all {
		fmt.Fprintf(&b, "l4drop_rule_packets_total{%s} %d\n", labels(r), r.Packets)
	}
	metric("l4drop_rule_bytes_total", "counter", "Bytes matched per rule.")
	for _, r := range all {
		fmt.Fprintf(&b, "l4drop_rule_bytes_total{%s} %d\n", labels(r), r.Bytes)
	}
	metric("l4drop_samples_total", "counter", "Samples written to user space.")
	fmt.Fprintf(&b, "l4drop_samples_total{iface=%q} %d\n", st.Iface, st.Samples)
	metric("l4drop_samples_lost_total", "counter", "Samples lost because the reader was slow.")
	fmt.Fprintf(&b, "l4drop_samples_lost_total{iface=%q} %d\n", st.Iface, st.Lost)
	metric("l4drop_reloads_total", "counter", "Rule sets loaded by this process.")
	fmt.Fprintf(&b, "l4drop_reloads_total{iface=%q} %d\n", st.Iface, reloads)
	metric("l4drop_reload_failures_total", "counter", "Reloads that failed (the previous set stayed).")
	fmt.Fprintf(&b, "l4drop_reload_failures_total{iface=%q} %d\n", st.Iface, fails)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	io.WriteString(w, b.String())
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
