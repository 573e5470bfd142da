package xdpcap

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bpffsRoot is where the BPF file system is usually mounted.
const bpffsRoot = "/sys/fs/bpf"

// HookName names a hook in output and statistics: its path, which tells
// apart hooks of the same file name in different directories, relative to
// /sys/fs/bpf when it is there.
func HookName(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = filepath.Clean(path)
	}
	if rel, ok := strings.CutPrefix(abs, bpffsRoot+"/"); ok {
		return rel
	}
	return abs
}

// OnBPFFS reports whether path exists on a BPF file system.
func OnBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}

// OpenHooks opens the pinned hooks at paths (empty ones skipped) and
// returns them with their names (HookName). It closes what it opened if
// one fails.
func OpenHooks(paths []string) ([]*ebpf.Map, []string, error) {
	var hooks []*ebpf.Map
	var names []string
	for _, path := range paths {
		if path == "" {
			continue
		}
		h, err := OpenHook(path)
		if err != nil {
			for _, h := range hooks {
				h.Close()
			}
			return nil, nil, err
		}
		hooks = append(hooks, h)
		names = append(names, HookName(path))
	}
	return hooks, names, nil
}

// String formats the counters as one line, per action received/matched
// packets, then the totals and the records lost:
//
//	XDPAborted: 0/0   XDPDrop: 0/0   XDPPass: 254/0   XDPTx: 0/0   XDPRedirect: 0/0   Total: 254/0   Lost: 0   (received/matched packets)
//
// The entry's counters lead the line when the capture saw packets there.
func (s Stats) String() string {
	var b strings.Builder
	if e := s.Action(Entry); e.Seen > 0 {
		fmt.Fprintf(&b, "%s: %d/%d   ", Entry, e.Seen, e.Matched)
	}
	for _, a := range Actions {
		c := s.Action(a)
		fmt.Fprintf(&b, "%s: %d/%d   ", a, c.Seen, c.Matched)
	}
	t := s.Total()
	fmt.Fprintf(&b, "Total: %d/%d   Lost: %d   (received/matched packets)", t.Seen, t.Matched, t.Lost)
	return b.String()
}

// RecordOptions say how Record runs.
type RecordOptions struct {
	// Count stops the recording after this many packets (0: never).
	Count int
	// Flush writes out every packet at once rather than in batches.
	Flush bool
	// Interval is how often Progress is called (0: a second).
	Interval time.Duration
	// Progress, if not nil, gets the capture's counters every Interval.
	Progress func(Stats)
	// Interrupt stops the recording: on its first value Record takes the
	// filters out and writes what is still buffered; on a second it stops
	// at once, leaving what is buffered unread.
	Interrupt <-chan os.Signal
	// Warn, if not nil, is told of trouble that does not stop the
	// recording: a failed detach, an output that takes no more packets.
	Warn func(msg string)
}

// RecordResult is what a recording did.
type RecordResult struct {
	// Packets counts the packets handed to the writer.
	Packets int
	// Stats are the capture's final counters, read once its filters were
	// out, unless StatsErr says why they could not be read.
	Stats    Stats
	StatsErr error
}

// drainTimeout is how long Record waits, once interrupted twice, for a
// writer that does not take the last packets (a full pipe).
const drainTimeout = 2 * time.Second

// Record writes the packets of capture c to w until o.Count packets,
// o.Interrupt or the end of the capture, then takes the filters out and
// closes c. A write to a pipe whose reader went away (EPIPE) ends the
// recording without an error.
func Record(c *Capture, w PacketWriter, o RecordOptions) (RecordResult, error) {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	warn := o.Warn
	if warn == nil {
		warn = func(string) {}
	}
	type result struct {
		n   int
		err error
	}
	// written is what the reader has handed the writer so far, for the
	// result should the reader not finish (a second interrupt while it is
	// stuck writing to a pipe).
	var written atomic.Int64
	done := make(chan result, 1)
	go func() {
		n := 0
		var p Packet
		for o.Count == 0 || n < o.Count {
			err := c.ReadInto(&p)
			if errors.Is(err, io.EOF) || errors.Is(err, ErrClosed) {
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
			if o.Flush {
				if err := w.Flush(); err != nil {
					done <- result{n, err}
					return
				}
			}
		}
		done <- result{n, w.Flush()}
	}()

	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	var res result
	finished := false
	stopping := false
loop:
	for {
		select {
		case <-tick.C:
			if o.Progress != nil {
				if s, err := c.Stats(); err == nil {
					o.Progress(s)
				}
			}
		case <-o.Interrupt:
			if stopping {
				// Stop draining: what is still buffered stays unread.
				break loop
			}
			// Take the filters out, then let the reader drain the buffer.
			stopping = true
			if err := c.Detach(); err != nil {
				warn(err.Error())
			}
		case res = <-done:
			finished = true
			break loop
		}
	}
	// The counters are final once the filters are out.
	if err := c.Detach(); err != nil && res.err == nil {
		res.err = err
	}
	var out RecordResult
	out.Stats, out.StatsErr = c.Stats()
	if cerr := c.Close(); cerr != nil && res.err == nil {
		res.err = cerr
	}
	if !finished {
		// Close interrupts the reader, which then flushes what it wrote;
		// a reader stuck on a full pipe is given up on.
		select {
		case res = <-done:
		case <-time.After(drainTimeout):
			res.n = int(written.Load())
			warn("the output does not take the last packets; some may be missing from it")
		}
	}
	if errors.Is(res.err, syscall.EPIPE) {
		// The reader of the output went away (tcpdump -c, head): done.
		res.err = nil
	}
	out.Packets = res.n
	return out, res.err
}
