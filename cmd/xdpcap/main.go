// Command xdpcap is tcpdump for XDP programs: it captures the packets an
// XDP program passes, drops, bounces (TX) or redirects, with the action it
// took, from the program's xdpcap hook.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/xdpcap"
)

// errUsage marks errors that the usage text should follow.
var errUsage = errors.New("usage")

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, errUsage) {
			fmt.Fprintf(os.Stderr, "xdpcap: %v\nRun xdpcap -h for help.\n", err)
		} else {
			fmt.Fprintf(os.Stderr, "xdpcap: %v\n", err)
		}
		os.Exit(1)
	}
}

type config struct {
	actions  []xdpcap.Action
	snapLen  int
	count    int
	linkType cbpf.LinkType
	format   string
	quiet    bool
	flush    bool
	buffer   int
	perf     bool
	interval time.Duration
	entry    bool
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("xdpcap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	actions := fs.String("actions", "aborted,drop,pass,tx,redirect", "XDP `actions` to capture at exit, comma-separated, or none")
	entry := fs.Bool("entry", false, "also capture packets as they enter the XDP program, before it acts")
	snapLen := fs.Int("s", xdpcap.DefaultSnapLen, "capture at most `snaplen` bytes of each packet")
	count := fs.Int("c", 0, "stop after `count` packets (0: never)")
	linkType := fs.String("linktype", "EN10MB", "link `type` of the hooked interfaces, for EXPR and the output")
	format := fs.String("format", "", "output `format`: pcap or pcapng (default: pcapng if OUTPUT ends in .pcapng, else pcap)")
	quiet := fs.Bool("q", false, "print no statistics every second, only the summary")
	flush := fs.Bool("flush", false, "write every packet out at once, not in batches")
	buffer := fs.Int("buffer", xdpcap.DefaultBufferSize>>10, "capture buffer `size` in KiB (ring buffer, or all per-CPU perf buffers)")
	perf := fs.Bool("perf", false, "use a perf event array instead of a BPF ring buffer")
	clear := fs.Bool("clear", false, "remove filters that killed captures left in the hooks, then exit")
	read := fs.String("r", "", "offline: run the filter over the packets of `file` (pcap or pcapng)")
	write := fs.String("w", "", "offline: write the matching packets to `file` (- for stdout)")
	header := fs.Bool("header", false, "print xdpcap.h and exit")
	interval := fs.Duration("interval", time.Second, "statistics `interval`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if *header {
		_, err := stdout.Write(xdpcap.Header)
		return err
	}

	if *buffer < 4 || *buffer > maxBufferKiB {
		return fmt.Errorf("%w: -buffer %d: want 4 to %d KiB", errUsage, *buffer, maxBufferKiB)
	}
	if *interval <= 0 {
		return fmt.Errorf("%w: -interval %s: want a positive duration", errUsage, *interval)
	}
	cfg := config{snapLen: *snapLen, count: *count, format: *format, quiet: *quiet, flush: *flush,
		buffer: *buffer << 10, perf: *perf, interval: *interval, entry: *entry}
	var err error
	if cfg.actions, err = xdpcap.ParseActions(*actions); err != nil {
		return fmt.Errorf("%w: -actions: %w", errUsage, err)
	}
	if len(cfg.actions) == 0 && !cfg.entry {
		return fmt.Errorf("%w: -actions none: nothing to capture without -entry", errUsage)
	}
	lt, err := cbpf.ParseLinkType(*linkType)
	if err != nil {
		return fmt.Errorf("%w: -linktype: %w", errUsage, err)
	}
	cfg.linkType = lt
	if cfg.snapLen < 1 || cfg.snapLen > xdpcap.DefaultSnapLen {
		return fmt.Errorf("%w: -s %d: want 1 to %d", errUsage, cfg.snapLen, xdpcap.DefaultSnapLen)
	}
	if cfg.count < 0 {
		return fmt.Errorf("%w: -c %d: want 0 or more", errUsage, cfg.count)
	}
	switch cfg.format {
	case "", "pcap", "pcapng":
	default:
		return fmt.Errorf("%w: -format %q: want pcap or pcapng", errUsage, cfg.format)
	}

	if *read != "" {
		if *clear || *entry {
			return fmt.Errorf("%w: -r takes no -clear or -entry", errUsage)
		}
		return offline(*read, *write, fs.Args(), cfg, stdout, stderr)
	}
	if *write != "" {
		return fmt.Errorf("%w: -w goes with -r; a live capture takes OUTPUT as argument", errUsage)
	}
	if *clear {
		if fs.NArg() == 0 {
			return fmt.Errorf("%w: -clear takes HOOK arguments", errUsage)
		}
		return clearHooks(strings.Join(fs.Args(), ","), stderr)
	}
	if fs.NArg() < 2 {
		return fmt.Errorf("%w: want HOOK and OUTPUT", errUsage)
	}
	// HOOK may be followed by more hooks: arguments that are pinned on a
	// BPF file system, where OUTPUT never is.
	pos := fs.Args()
	n := 1
	for n < len(pos)-1 && xdpcap.OnBPFFS(pos[n]) {
		n++
	}
	return live(strings.Join(pos[:n], ","), pos[n], pos[n+1:], cfg, stdout, stderr)
}

// maxBufferKiB is the largest -buffer: 1 GiB.
const maxBufferKiB = 1 << 20
