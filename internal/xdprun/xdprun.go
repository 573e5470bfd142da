// Package xdprun runs XDP programs over packets with BPF_PROG_TEST_RUN, fast.
//
// A test run of an XDP program that is attached nowhere adds it to the
// kernel's XDP dispatcher and removes it again, each a synchronize_rcu: about
// 50 ms a call. A Runner keeps the program it runs attached, in generic mode,
// to the loopback of a network namespace of its own, so a run costs
// microseconds and a pass over a capture file takes a second, not an hour.
package xdprun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/internal/netns"
)

// MinPacketLen is the shortest packet XDP handles: an Ethernet header.
// Test runs refuse shorter data, and no XDP program ever sees less.
const MinPacketLen = 14

// ErrPacketSize is returned by Run for packets of a size XDP never handles:
// shorter than MinPacketLen, or longer than a multi-buffer packet can be
// (about 17 pages).
var ErrPacketSize = errors.New("packet of a size XDP never handles")

// Runner runs XDP programs with BPF_PROG_TEST_RUN. It is safe for
// concurrent use; runs of different programs take turns.
type Runner struct {
	ns       *netns.NS
	mu       sync.Mutex
	attached *ebpf.Program
	link     link.Link
}

var count atomic.Uint32

// New returns a Runner with a network namespace of its own, named after
// prefix, the process and a counter. Close removes it.
func New(prefix string) (*Runner, error) {
	ns, err := netns.New(fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), count.Add(1)))
	if err != nil {
		return nil, fmt.Errorf("namespace for test runs: %w", err)
	}
	return &Runner{ns: ns}, nil
}

// attach keeps prog attached to the namespace's loopback; r.mu is held.
func (r *Runner) attach(prog *ebpf.Program) error {
	if r.ns == nil {
		return errors.New("test run: runner closed")
	}
	if r.attached == prog {
		return nil
	}
	r.detach()
	return r.ns.Do(func() error {
		// lo is ifindex 1 in every namespace.
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: 1, Flags: link.XDPGenericMode})
		if err != nil {
			return fmt.Errorf("attach to lo for test runs: %w", err)
		}
		r.link, r.attached = l, prog
		return nil
	})
}

func (r *Runner) detach() error {
	if r.link == nil {
		return nil
	}
	err := r.link.Close()
	r.link, r.attached = nil, nil
	return err
}

// Attach attaches prog now, so that a program the kernel refuses to attach
// fails here rather than at its first run.
func (r *Runner) Attach(prog *ebpf.Program) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attach(prog)
}

// Run runs prog once with opts and returns its return value. Packets of a
// size XDP never sees give an error wrapping ErrPacketSize.
func (r *Runner) Run(prog *ebpf.Program, opts *ebpf.RunOptions) (uint32, error) {
	if len(opts.Data) < MinPacketLen {
		return 0, fmt.Errorf("%d bytes: %w", len(opts.Data), ErrPacketSize)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.attach(prog); err != nil {
		return 0, err
	}
	ret, err := prog.Run(opts)
	// The kernel refuses what does not fit a multi-buffer packet with one
	// of these, depending on how far it got.
	if err != nil && len(opts.Data) > 4096 && (errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.E2BIG)) {
		return 0, fmt.Errorf("%d bytes: %w", len(opts.Data), ErrPacketSize)
	}
	if err != nil {
		return 0, fmt.Errorf("test run (%d bytes): %w", len(opts.Data), err)
	}
	return ret, nil
}

// Benchmark runs prog n times over pkt in one call and returns the kernel's
// mean duration of a run.
func (r *Runner) Benchmark(prog *ebpf.Program, pkt []byte, n int) (time.Duration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.attach(prog); err != nil {
		return 0, err
	}
	_, d, err := prog.Benchmark(pkt, n, nil)
	if err != nil {
		return 0, fmt.Errorf("test run: %w", err)
	}
	return d, nil
}

// Close detaches the program it ran last and removes the namespace.
func (r *Runner) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ns == nil {
		return nil
	}
	err := errors.Join(r.detach(), r.ns.Close())
	r.ns = nil
	return err
}
