package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/l4drop/l4drop/lab/bench"
)

func benchCmd(args []string, stdout, stderr io.Writer) error {
	cfg := bench.DefaultConfig()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&cfg.Duration, "d", cfg.Duration, "duration of each drop-rate measurement")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bc, err := bench.RawBytecode("udp dst port 53")
	if err != nil {
		return err
	}
	for _, f := range []bench.Filter{bench.DropAll(), bench.NoFilter(), bench.IPTables(bc), bench.XDPFilter(53, "udp")} {
		r, err := bench.MeasureDrop(ctx, cfg, f)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%-40s sent %10d  received %10d  %.3f Mpps\n", r.Name, r.Sent, r.Received, r.Mpps())
	}
	return nil
}
