package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/l4drop/l4drop/fingerprint"
	"github.com/l4drop/l4drop/l4drop/daemon"
)

// cmdRun is `l4drop run`: the daemon of l4drop/daemon, reloading when the
// rules file changes or on SIGHUP.
func cmdRun(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("run RULES.yaml|rules.o --iface IF [flags]", stderr)
	options := loadOptions(fs)
	dir := fs.String("dir", "", "directory for rotating pcapng sample files (empty: no files)")
	rotate := fs.Duration("rotate", time.Minute, "start a new sample file this often")
	keep := fs.Int("keep", 60, "sample files to keep")
	metrics := fs.String("metrics", "127.0.0.1:9786", "address for Prometheus metrics (/metrics; empty: none)")
	poll := fs.Duration("poll", 2*time.Second, "how often to check the rules file for changes")
	sflowTo := fs.String("sflow", "", "send samples as sFlow v5 to HOST:PORT[,HOST:PORT...]")
	sflowAgent := fs.String("sflow-agent", "", "sFlow agent address (default: the interface's first IPv4 address)")
	auto := fs.Bool("auto", false, "find attacks in the samples and drop them with rules of their own")
	autoThreshold := fs.Float64("auto-threshold", 10000, "with --auto: the rate (pps) from which traffic can be an attack")
	autoCeiling := fs.Float64("auto-ceiling", 0, "with --auto: the rate (pps) from which one packet template is an attack even if learned as normal, as a flood running when the daemon starts (0: 10 x --auto-threshold, < 0: never)")
	autoExpire := fs.Duration("auto-expire", time.Minute, "with --auto: how long a rule stays once its attack is below the threshold")
	autoMonitor := fs.Bool("auto-monitor", false, "with --auto: deploy rules that count and sample, never drop")
	pos, err := parse(fs, args, 1, "l4drop run rules.yaml --iface eth0 --location ams --dir /var/lib/l4drop")
	if err != nil {
		return err
	}
	opts, err := options()
	if err != nil {
		return err
	}
	if *poll <= 0 {
		return fmt.Errorf("--poll %v: want more than 0", *poll)
	}
	cfg := daemon.Config{
		Object: func(context.Context) ([]byte, error) { return object(pos[0]) },
		Watch:  []string{pos[0]}, Poll: *poll, Load: opts, Metrics: *metrics,
		Logger: slog.New(slog.NewTextHandler(stderr, nil)),
	}
	if *dir != "" {
		pd, err := daemon.NewPcapDir(*dir, *rotate, *keep)
		if err != nil {
			return err
		}
		cfg.Components = append(cfg.Components, pd)
	}
	cfg.Components = append(cfg.Components, daemon.NewExpiry(), daemon.NewCaptureWatch())
	if *sflowTo != "" {
		sf, err := daemon.NewSFlow(strings.Split(*sflowTo, ","), *sflowAgent)
		if err != nil {
			return err
		}
		cfg.Components = append(cfg.Components, sf)
	}
	if *auto {
		a, err := daemon.NewAutoConfig(fingerprint.Config{Threshold: *autoThreshold, Ceiling: *autoCeiling, Expire: *autoExpire, Monitor: *autoMonitor})
		if err != nil {
			return err
		}
		cfg.Components = append(cfg.Components, a)
	} else if *autoMonitor {
		return fmt.Errorf("--auto-monitor needs --auto")
	}
	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	// SIGHUP is caught before the program goes in: one sent as soon as the
	// rule set is seen loaded must reload it, not end the daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := d.Start(ctx); err != nil {
		return err
	}
	for {
		select {
		case <-hup:
			d.Logger().Info("SIGHUP: reloading")
			d.Reload(ctx)
		case <-ctx.Done():
			d.Logger().Info("stopping; the rule set stays loaded", "unload", "l4drop unload --iface "+opts.Iface)
			return d.Stop()
		}
	}
}
