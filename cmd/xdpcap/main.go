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
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/xdpcap"
)

const usage = `xdpcap: tcpdump for XDP programs.

Usage:
  xdpcap [flags] HOOK [HOOK...] OUTPUT|- [EXPR...]   capture from running XDP programs
  xdpcap -entry [flags] HOOK... OUTPUT|- [EXPR...]    also capture packets as they enter
  xdpcap -r IN [-w OUT] [flags] [EXPR...]            run the filter over a capture file
  xdpcap -clear HOOK [HOOK...]                        remove filters a killed xdpcap left
  xdpcap -header                                      print xdpcap.h, for C programs

HOOK is an xdpcap hook pinned on bpffs: the program array an XDP program
tail calls with xdpcap_exit(ctx, &hook, action) (xdpcap.h) or xdpcap.Exit
(Go). Several hooks, as arguments or comma-separated, are captured at
once. OUTPUT is a pcap or pcapng file, or - for stdout (implies -q and
-flush). EXPR is a pcap-filter expression (see pcap-filter(7)) or cBPF
bytecode "N,op jt jf k,..." as tcpdump -ddd prints it; without EXPR every
packet is captured. The filter sees the packet as the XDP program leaves
it (the first buffer of a multi-buffer packet); the whole packet is
captured, up to the snap length.

Each packet is recorded with the action its XDP program took. pcapng
output shows it and the hook: one interface per hook and action, named
HOOK:XDPDrop and so on (HOOK is the hook's path, relative to /sys/fs/bpf
when it is there), and the packet's verdict option and comment. pcap
output cannot.

-entry also captures each packet as it enters the XDP program, before the
program acts on it or rewrites it: pcapng shows those on interface
HOOK:Entry, with no verdict and the comment "entry, before the XDP
program". The program must support it (xdpcap.h: xdpcap_entry, and its
body in the hook's slot 6). With -actions none, xdpcap captures at entry
only.

-r runs the very filter code a live capture would attach over each
packet of a capture file, writes the matches with -w and prints "N
packets matched of M": test a filter on a capture before attaching it.
Filters that read only the packet run in xdpcap's interpreter of their
eBPF code, checked against the kernel (BPF_PROG_TEST_RUN) on the first 256
packets and one in 1024 after; the others, and packets longer than 3000
bytes, run in the kernel. As in XDP, the cBPF len is the captured length,
not the length on the wire.

Every second xdpcap prints, per action, packets received/matched by the
filter, and lost records (buffer full); a summary at exit. It stops on
Ctrl-C, SIGTERM or after -c packets, and takes its filters out of the
hooks. A capture killed with SIGKILL leaves them in: the next xdpcap on
the hook, or xdpcap -clear, removes them.

Examples:
  xdpcap /sys/fs/bpf/xdpcap_hook dump.pcap 'udp port 53'
  xdpcap -actions drop,tx -format pcapng /sys/fs/bpf/xdpcap_hook drops.pcapng
  xdpcap /sys/fs/bpf/xdpcap_hook - 'tcp[tcpflags] & tcp-syn != 0' | tcpdump -n -r -
  xdpcap -c 100 -s 128 /sys/fs/bpf/stage1 /sys/fs/bpf/stage2 both.pcapng icmp
  xdpcap -r trace.pcap -w matched.pcap 'ip6 and udp'
  xdpcap -clear /sys/fs/bpf/xdpcap_hook

Flags:
`

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
	cfg.actions = []xdpcap.Action{}
	if strings.TrimSpace(*actions) != "none" {
		for _, name := range strings.Split(*actions, ",") {
			a, err := xdpcap.ParseAction(strings.TrimSpace(name))
			if err != nil {
				return fmt.Errorf("%w: -actions: %w", errUsage, err)
			}
			if slices.Contains(cfg.actions, a) {
				return fmt.Errorf("%w: -actions: %s given twice", errUsage, a.KernelName())
			}
			cfg.actions = append(cfg.actions, a)
		}
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
	for n < len(pos)-1 && onBPFFS(pos[n]) {
		n++
	}
	return live(strings.Join(pos[:n], ","), pos[n], pos[n+1:], cfg, stdout, stderr)
}

// maxBufferKiB is the largest -buffer: 1 GiB.
const maxBufferKiB = 1 << 20

// compile turns the EXPR arguments into a filter: nil for none, bytecode
// as is, anything else through libpcap.
func compile(args []string, lt cbpf.LinkType, snapLen int) ([]bpf.Instruction, error) {
	expr := strings.TrimSpace(strings.Join(args, " "))
	if expr == "" {
		return nil, nil
	}
	if cbpf.IsBytecode(expr) {
		prog, err := cbpf.Parse(expr)
		if err != nil {
			return nil, fmt.Errorf("EXPR (bytecode, %d bytes): %w", len(expr), err)
		}
		return prog, nil
	}
	prog, err := cbpf.Compile(expr, lt, snapLen)
	if ce := (*cbpf.CompileError)(nil); errors.As(err, &ce) {
		// An expression is echoed back only so far: it may be huge.
		short := *ce
		short.Expr, short.Msg = shorten(ce.Expr), shorten(ce.Msg)
		return nil, fmt.Errorf("EXPR (%d bytes): %w", len(expr), &short)
	}
	if err != nil {
		return nil, fmt.Errorf("EXPR: %w", err)
	}
	return prog, nil
}

// shortLen is the most bytes of user input an error message quotes.
const shortLen = 200

// shorten cuts s to shortLen bytes, saying how much it left out.
func shorten(s string) string {
	if len(s) <= shortLen {
		return s
	}
	return fmt.Sprintf("%s... (%d more bytes)", strings.ToValidUTF8(s[:shortLen], ""), len(s)-shortLen)
}

// hookName names a hook in the output and the statistics: its path, which
// tells apart hooks of the same file name in different directories,
// relative to /sys/fs/bpf when it is there.
func hookName(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = filepath.Clean(path)
	}
	if rel, ok := strings.CutPrefix(abs, bpffsRoot+"/"); ok {
		return rel
	}
	return abs
}

// bpffsRoot is where the BPF file system is usually mounted.
const bpffsRoot = "/sys/fs/bpf"

// onBPFFS reports whether path exists on a BPF file system.
func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}

func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): run it with sudo")
	}
	_ = rlimit.RemoveMemlock()
	return nil
}

func openHooks(list string) ([]*ebpf.Map, []string, error) {
	var hooks []*ebpf.Map
	var names []string
	for _, path := range strings.Split(list, ",") {
		if path == "" {
			continue
		}
		h, err := xdpcap.OpenHook(path)
		if err != nil {
			for _, h := range hooks {
				h.Close()
			}
			return nil, nil, err
		}
		hooks = append(hooks, h)
		names = append(names, hookName(path))
	}
	if len(hooks) == 0 {
		return nil, nil, fmt.Errorf("%w: no HOOK", errUsage)
	}
	return hooks, names, nil
}

func clearHooks(list string, stderr io.Writer) error {
	if err := needRoot(); err != nil {
		return err
	}
	hooks, names, err := openHooks(list)
	if err != nil {
		return err
	}
	defer func() {
		for _, h := range hooks {
			h.Close()
		}
	}()
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
	filter, err := compile(exprArgs, cfg.linkType, cfg.snapLen)
	if err != nil {
		return err
	}
	opts := xdpcap.Options{
		Filter:     filter,
		Actions:    cfg.actions,
		Entry:      cfg.entry,
		SnapLen:    cfg.snapLen,
		BufferSize: cfg.buffer,
		Perf:       cfg.perf,
	}
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
	defer func() {
		for _, h := range hooks {
			h.Close()
		}
	}()

	// The output is opened before the filters go in, so that a bad path
	// leaves the hooks untouched.
	var out io.Writer
	markStarted := func() {}
	if output == "-" {
		out = stdout
		cfg.quiet, cfg.flush = true, true
	} else {
		f, err := os.Create(output)
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
	format := cfg.format
	if format == "" {
		format = "pcap"
		if strings.HasSuffix(output, ".pcapng") {
			format = "pcapng"
		}
	}
	w, err := newWriter(out, format, layers.LinkType(pcapLinkType(cfg.linkType)), cfg.snapLen, names)
	if err != nil {
		return err
	}

	capture, err := xdpcap.Start(hooks, opts)
	if err != nil {
		return err
	}
	markStarted()
	defer capture.Close()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	defer signal.Stop(sigs)

	type result struct {
		n   int
		err error
	}
	// written is what the reader has handed the writer so far, for the
	// summary should the reader not finish (a second Ctrl-C while it is
	// stuck writing to a pipe).
	var written atomic.Int64
	done := make(chan result, 1)
	go func() {
		n := 0
		var p xdpcap.Packet
		for cfg.count == 0 || n < cfg.count {
			err := capture.ReadInto(&p)
			if errors.Is(err, io.EOF) || errors.Is(err, xdpcap.ErrClosed) {
				break
			}
			if err != nil {
				done <- result{n, err}
				return
			}
			if err := w.WritePacket(p); err != nil {
				done <- result{n, err}
				return
			}
			n++
			written.Store(int64(n))
			if cfg.flush {
				if err := w.Flush(); err != nil {
					done <- result{n, err}
					return
				}
			}
		}
		done <- result{n, w.Flush()}
	}()

	tick := time.NewTicker(cfg.interval)
	defer tick.Stop()
	var res result
	finished := false
	stopping := false
loop:
	for {
		select {
		case <-tick.C:
			if !cfg.quiet {
				if s, err := capture.Stats(); err == nil {
					fmt.Fprintln(stderr, statsLine(s))
				}
			}
		case <-sigs:
			if stopping {
				// Stop draining: what is still buffered stays unread.
				break loop
			}
			// Take the filters out, then let the reader drain the buffer.
			stopping = true
			if err := capture.Detach(); err != nil {
				fmt.Fprintf(stderr, "xdpcap: %v\n", err)
			}
		case res = <-done:
			finished = true
			break loop
		}
	}
	// The counters are final once the filters are out.
	if err := capture.Detach(); err != nil && res.err == nil {
		res.err = err
	}
	stats, serr := capture.Stats()
	if cerr := capture.Close(); cerr != nil && res.err == nil {
		res.err = cerr
	}
	if !finished {
		// Close interrupts the reader, which then flushes what it wrote;
		// a reader stuck on a full pipe is given up on.
		select {
		case res = <-done:
		case <-time.After(2 * time.Second):
			res.n = int(written.Load())
			fmt.Fprintln(stderr, "xdpcap: the output does not take the last packets; some may be missing from it")
		}
	}
	if errors.Is(res.err, syscall.EPIPE) {
		// The reader of stdout went away (tcpdump -c, head): done.
		res.err = nil
	}
	if serr == nil {
		fmt.Fprintln(stderr, statsLine(stats))
		if len(hooks) > 1 {
			for i, name := range names {
				fmt.Fprintf(stderr, "  %s: %s\n", name, statsLine(xdpcap.Stats{Hooks: stats.Hooks[i : i+1]}))
			}
		}
		t := stats.Total()
		fmt.Fprintf(stderr, "%d packets captured, %d received by filter, %d matched, %d lost\n", res.n, t.Seen, t.Matched, t.Lost)
		if unread := int64(t.Matched) - int64(t.Lost) - int64(res.n); unread > 0 && cfg.count == 0 {
			fmt.Fprintf(stderr, "%d packets left unread in the buffer (stopped before it was drained)\n", unread)
		}
	}
	return res.err
}

// statsLine formats the counters as
//
//	XDPAborted: 0/0   XDPDrop: 0/0   XDPPass: 254/0   XDPTx: 0/0   XDPRedirect: 0/0   Total: 254/0   Lost: 0   (received/matched packets)
func statsLine(s xdpcap.Stats) string {
	var b strings.Builder
	if e := s.Action(xdpcap.Entry); e.Seen > 0 {
		fmt.Fprintf(&b, "%s: %d/%d   ", xdpcap.Entry, e.Seen, e.Matched)
	}
	for _, a := range xdpcap.Actions {
		c := s.Action(a)
		fmt.Fprintf(&b, "%s: %d/%d   ", a, c.Seen, c.Matched)
	}
	t := s.Total()
	fmt.Fprintf(&b, "Total: %d/%d   Lost: %d   (received/matched packets)", t.Seen, t.Matched, t.Lost)
	return b.String()
}

func newWriter(out io.Writer, format string, lt layers.LinkType, snapLen int, names []string) (xdpcap.PacketWriter, error) {
	if format == "pcapng" {
		return xdpcap.NewPcapngWriter(out, lt, snapLen, names)
	}
	return xdpcap.NewPcapWriter(out, lt, snapLen)
}

// pcapLinkType returns the LINKTYPE_ value capture files store for a DLT_
// value; they differ for a few.
func pcapLinkType(lt cbpf.LinkType) uint32 {
	for v := uint32(100); v <= 106; v++ {
		if cbpf.LinkTypeFromPcap(v) == lt {
			return v
		}
	}
	return uint32(lt)
}
