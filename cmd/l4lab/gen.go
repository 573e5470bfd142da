package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/lab"
)

const genUsage = `Usage: l4lab gen [flags] [TEMPLATE...]

Sends traffic made from templates, mixed by weight, as fast as the kernel
allows (BPF_PROG_TEST_RUN in live-frames mode redirecting into a veth) or at
-rate. Without -iface it builds a lab (two namespaces joined by a veth pair,
removed at the end or on Ctrl-C), sends into it, and reports what reached the
server side. With -iface it sends out of that interface of the current
namespace or of -netns NS; the frames carry the lab's
addresses (198.18.0.1 -> 198.18.0.2, fd00:198:18::1 -> ::2). A veth drops
redirected frames, uncounted, unless its peer runs NAPI: attach an XDP
program to the peer or switch GRO on there (ethtool -K PEER gro on); the lab
does the latter.

A TEMPLATE is ` + lab.TemplateHelp + `

Examples:
  l4lab gen -d 5s 'dns,name=*.attack.example,weight=95' 'dns,name=www.example.org,weight=5'
  l4lab gen -n 1000000 -rate 200000 'syn,port=80,randsrc' 'udp,port=53,v6,vlan=100'
  l4lab gen -netns NS -iface veth0 -n 10000 'dns,name=*.example.com'
  l4lab gen -r attack.pcap -rate 10000 -d 10s

Flags:
`

func genCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, genUsage); fs.PrintDefaults() }
	count := fs.Uint64("n", 0, "packets to send (0: until -d or Ctrl-C)")
	dur := fs.Duration("d", 0, "how long to send (0: until -n, or Ctrl-C; in a lab without -n: 5s)")
	rate := fs.Float64("rate", 0, "packets per second (0: full speed)")
	seed := fs.Uint64("seed", 1, "seed for the random fields; the same seed sends the same packets")
	batch := fs.Uint("batch", lab.DefaultBatchSize, "live-frames batch size")
	cpu := fs.Int("cpu", -1, "pin the sender to this CPU (-1: any)")
	iface := fs.String("iface", "", "send out of this interface of the current namespace (or -netns) instead of a lab")
	nsName := fs.String("netns", "", "with -iface: the interface's network namespace (as 'ip netns' names it)")
	quiet := fs.Bool("q", false, "no progress lines")
	replay := fs.String("r", "", "replay the Ethernet frames of this pcap or pcapng file (AF_PACKET) instead of templates")
	afpacket := fs.Bool("afpacket", false, "send the templates' frames with AF_PACKET (no random fields; the fallback when live frames are not available)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkGenFlags(*dur, *rate, *batch, *cpu); err != nil {
		return err
	}
	specs := fs.Args()
	if *nsName != "" && *iface == "" {
		return fmt.Errorf("-netns needs -iface")
	}
	if *replay != "" && len(specs) > 0 {
		return fmt.Errorf("-r and templates exclude each other")
	}
	if len(specs) == 0 {
		specs = []string{"udp,port=9"}
	}
	ts, err := lab.ParseTemplates(specs)
	if err != nil {
		return err
	}
	if *count == 0 && *dur == 0 && *iface != "" && !isTerminal(os.Stdin) {
		// Nothing would stop it but a signal; fine, but say so.
		fmt.Fprintln(stderr, "l4lab gen: sending until interrupted")
	}
	opts := lab.RunOptions{Count: *count, Duration: *dur, Rate: *rate, BatchSize: uint32(*batch), CPU: *cpu + 1}
	if !*quiet {
		opts.Progress = func(r lab.Result) {
			fmt.Fprintf(stderr, "%6.1fs  sent %12d  %8.3f Mpps\n", r.Elapsed.Seconds(), r.Sent, r.PPS/1e6)
		}
	}
	report := func(r lab.Result) {
		fmt.Fprintf(stdout, "sent %d packets in %.2fs (%.3f Mpps)\n", r.Sent, r.Elapsed.Seconds(), r.PPS/1e6)
		if len(ts) > 1 && len(r.PerTemplate) == len(ts) {
			for i, t := range ts {
				fmt.Fprintf(stdout, "  %12d  %s\n", r.PerTemplate[i], t.Spec)
			}
		}
	}
	traffic := lab.Traffic{Templates: ts, Seed: *seed}
	if *replay != "" {
		if traffic.Frames, err = lab.ReadFrames(*replay); err != nil {
			return err
		}
		ts = nil
	} else if *afpacket {
		traffic.Frames, ts = lab.TemplateFrames(ts), nil
	}
	if *iface != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		r, err := traffic.SendFrom(ctx, *nsName, *iface, opts)
		if err != nil {
			return err
		}
		report(r)
		return nil
	}
	if *count == 0 && *dur == 0 {
		opts.Duration = 5 * time.Second
	}
	res, err := traffic.SendInLab(opts)
	if err != nil {
		return err
	}
	report(res.Result)
	d, r := res.Server, res.Result
	fmt.Fprintf(stdout, "server %s: received %d, dropped at the interface %d, reached the IP stack %d\n",
		res.ServerIf, d.RxPackets, d.RxDropped, d.IPIn)
	if lost := r.Sent - min(r.Sent, d.RxPackets+d.RxDropped); lost > 0 {
		fmt.Fprintf(stdout, "  %d frames were lost in the veth (receiver too slow for the sender)\n", lost)
	}
	return nil
}

// maxBatch is the kernel's largest live-frames batch (TEST_XDP_MAX_BATCH).
const maxBatch = 256

// checkGenFlags refuses flag values that would make gen run forever, wrap
// around or fail once the lab is up: every flag is checked before anything
// is created.
func checkGenFlags(dur time.Duration, rate float64, batch uint, cpu int) error {
	if dur < 0 {
		return fmt.Errorf("-d %v: want a positive duration, or 0 to send until -n or Ctrl-C", dur)
	}
	if rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
		return fmt.Errorf("-rate %v: want packets per second, or 0 for full speed", rate)
	}
	if batch < 1 || batch > maxBatch {
		return fmt.Errorf("-batch %d: want 1 to %d frames", batch, maxBatch)
	}
	if cpu < -1 {
		return fmt.Errorf("-cpu %d: want a CPU number, or -1 for any", cpu)
	}
	if cpu >= 0 {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err != nil {
			return fmt.Errorf("-cpu %d: %w", cpu, err)
		}
		if !set.IsSet(cpu) {
			return fmt.Errorf("-cpu %d: not a CPU this process may run on (%d of them)", cpu, set.Count())
		}
	}
	return nil
}
