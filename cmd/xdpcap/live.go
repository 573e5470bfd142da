package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/l4drop/l4drop/xdpcap"
	"github.com/l4drop/l4drop/xdpcap/filter"
)

func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): run it with sudo")
	}
	_ = rlimit.RemoveMemlock()
	return nil
}

// openHooks opens the comma-separated hooks of list.
func openHooks(list string) ([]*ebpf.Map, []string, error) {
	hooks, names, err := xdpcap.OpenHooks(strings.Split(list, ","))
	if err == nil && len(hooks) == 0 {
		err = fmt.Errorf("%w: no HOOK", errUsage)
	}
	return hooks, names, err
}

func closeHooks(hooks []*ebpf.Map) {
	for _, h := range hooks {
		h.Close()
	}
}

func clearHooks(list string, stderr io.Writer) error {
	if err := needRoot(); err != nil {
		return err
	}
	hooks, names, err := openHooks(list)
	if err != nil {
		return err
	}
	defer closeHooks(hooks)
	for i, h := range hooks {
		n, err := xdpcap.Clear(h)
		if err != nil {
			return fmt.Errorf("%s: %w", names[i], err)
		}
		fmt.Fprintf(stderr, "%s: removed %d stale filters\n", names[i], n)
	}
	return nil
}

func live(hookList, output string, exprArgs []string, cfg config, stdout, stderr io.Writer) (err error) {
	prog, err := filter.Parse(strings.Join(exprArgs, " "), cfg.linkType, cfg.snapLen)
	if err != nil {
		return err
	}
	opts := xdpcap.Options{Filter: prog, Actions: cfg.actions, Entry: cfg.entry, SnapLen: cfg.snapLen,
		BufferSize: cfg.buffer, Perf: cfg.perf}
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := needRoot(); err != nil {
		return err
	}
	hooks, names, err := openHooks(hookList)
	if err != nil {
		return err
	}
	defer closeHooks(hooks)

	// The output is opened before the filters go in, so that a bad path
	// leaves the hooks untouched.
	var out io.Writer
	markStarted := func() {}
	if output == "-" {
		out = stdout
		cfg.quiet, cfg.flush = true, true
	} else {
		f, err := xdpcap.CreateOutput(output)
		if err != nil {
			return err
		}
		started := false
		defer func() {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if !started {
				// Nothing was captured: leave no empty file behind.
				os.Remove(output)
			}
		}()
		markStarted = func() { started = true }
		out = f
	}
	w, err := xdpcap.NewWriter(out, xdpcap.OutputFormat(output, cfg.format), filter.PcapLinkType(cfg.linkType), cfg.snapLen, names)
	if err != nil {
		return err
	}

	// Signals are caught before the filters go in: one that arrives while
	// they are being attached must end the capture cleanly, not kill the
	// process with the filters left behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	defer signal.Stop(sigs)

	capture, err := xdpcap.Start(hooks, opts)
	if err != nil {
		return err
	}
	markStarted()
	defer capture.Close()

	ro := xdpcap.RecordOptions{Count: cfg.count, Flush: cfg.flush, Interval: cfg.interval, Interrupt: sigs,
		Warn: func(msg string) { fmt.Fprintf(stderr, "xdpcap: %s\n", msg) }}
	if !cfg.quiet {
		ro.Progress = func(s xdpcap.Stats) { fmt.Fprintln(stderr, s) }
	}
	res, err := xdpcap.Record(capture, w, ro)
	if res.StatsErr == nil {
		stats := res.Stats
		fmt.Fprintln(stderr, stats)
		if len(hooks) > 1 {
			for i, name := range names {
				fmt.Fprintf(stderr, "  %s: %s\n", name, xdpcap.Stats{Hooks: stats.Hooks[i : i+1]})
			}
		}
		t := stats.Total()
		fmt.Fprintf(stderr, "%d packets captured, %d received by filter, %d matched, %d lost\n", res.Packets, t.Seen, t.Matched, t.Lost)
		if unread := int64(t.Matched) - int64(t.Lost) - int64(res.Packets); unread > 0 && cfg.count == 0 {
			fmt.Fprintf(stderr, "%d packets left unread in the buffer (stopped before it was drained)\n", unread)
		}
	}
	return err
}
