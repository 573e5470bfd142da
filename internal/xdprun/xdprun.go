// Package xdprun runs XDP programs with BPF_PROG_TEST_RUN, fast.
//
// A test run that repeats the program (repeat > 1) of an XDP program that
// is attached nowhere adds it to the kernel's XDP dispatcher and removes it
// again, each a synchronize_rcu: 18-23 ms a call here, during which every
// other such run on the machine waits. A Runner keeps a program it runs
// repeatedly attached, in generic mode, to the loopback of a network
// namespace of its own (made when first needed), so that each call costs
// the runs alone. A single run (repeat 0 or 1) does not touch the
// dispatcher (since Linux 5.18; 2-30 µs a call here): Run makes it
// directly, with no namespace and no attachment, which is what a pass over
// a capture file or a fuzzer's short-lived programs need.
package xdprun

import (
	"errors"
	"fmt"
	"sync"
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
// concurrent use; repeated runs (Benchmark, Run with Repeat > 1) take
// turns, single runs run at once.
type Runner struct {
	mu       sync.Mutex
	closed   bool
	ns       *netns.NS // made by the first attach
	attached *ebpf.Program
	link     link.Link
}

// New returns a Runner. The network namespace it attaches programs in is
// made by the first Attach or Benchmark, a private one: Close removes it,
// and so does the end of the process, however it ends (a fuzzer kills its
// workers).
func New() (*Runner, error) {
	return &Runner{}, nil
}

// attach keeps prog attached to the namespace's loopback; r.mu is held.
func (r *Runner) attach(prog *ebpf.Program) error {
	if r.closed {
		return errRunnerClosed
	}
	if r.attached == prog {
		return nil
	}
	if r.ns == nil {
		ns, err := netns.NewPrivate()
		if err != nil {
			return fmt.Errorf("namespace for test runs: %w", err)
		}
		r.ns = ns
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

// Run runs prog with opts (once, unless opts.Repeat says otherwise) and
// returns its return value. Packets of a size XDP never sees give an error
// wrapping ErrPacketSize.
func (r *Runner) Run(prog *ebpf.Program, opts *ebpf.RunOptions) (uint32, error) {
	if len(opts.Data) < MinPacketLen {
		return 0, fmt.Errorf("%d bytes: %w", len(opts.Data), ErrPacketSize)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, errRunnerClosed
	}
	if opts.Repeat > 1 {
		// Runs of the attached program must not interleave with a
		// change of it.
		defer r.mu.Unlock()
		if err := r.attach(prog); err != nil {
			return 0, err
		}
	} else {
		r.mu.Unlock()
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

// errRunnerClosed is returned by runs after Close.
var errRunnerClosed = errors.New("test run: runner closed")

// Close detaches the program it ran last and removes the namespace.
func (r *Runner) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.detach()
	if r.ns != nil {
		err = errors.Join(err, r.ns.Close())
		r.ns = nil
	}
	return err
}
