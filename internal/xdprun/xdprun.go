// Package xdprun runs XDP programs over packets with BPF_PROG_TEST_RUN, fast.
//
// A test run of an XDP program that is attached nowhere adds it to the
// kernel's XDP dispatcher and removes it again, each a synchronize_rcu: about
// 50 ms a call, during which every other XDP test run on the machine waits.
// A Runner keeps a program attached, in generic mode, to the loopback of a
// network namespace of its own, so a run costs microseconds and a pass over
// a capture file takes a second, not an hour. Attaching is itself such a
// change, so programs that come and go (a fuzzer's, a test's hundreds) run
// through an anchor instead: one attached program that tail-calls the
// program in its only slot. Putting a program in the slot is a map update.
package xdprun

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
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

	// One anchor per expected attach type: a program array takes only
	// programs like its first user.
	anchors    [2]*anchor
	anchorDevs bool // the veth pair the anchors attach to exists
}

// anchor is a program that tail-calls slots[0], which holds inSlot. It
// stays attached to an interface of its own (one end of a veth pair in the
// namespace), so that anchors and the program attached to lo never
// displace one another.
type anchor struct {
	prog   *ebpf.Program
	slots  *ebpf.Map
	link   link.Link
	inSlot *ebpf.Program
}

// anchorTypes are the expected attach types of the anchors: none, as
// programs built in Go have, and XDP, as ELF loaders give SEC("xdp").
var anchorTypes = [2]ebpf.AttachType{ebpf.AttachNone, ebpf.AttachXDP}

func (r *Runner) newAnchor(i int) (*anchor, error) {
	at := anchorTypes[i]
	slots, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdprun_anchor", Type: ebpf.XDP, AttachType: at, License: "GPL",
		Instructions: asm.Instructions{
			// R1 is still the context the tail-called program gets.
			asm.LoadMapPtr(asm.R2, slots.FD()),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnTailCall.Call(),
			asm.Mov.Imm32(asm.R0, anchorMissed),
			asm.Return(),
		},
	})
	if err != nil {
		slots.Close()
		return nil, err
	}
	a := &anchor{prog: prog, slots: slots}
	if !r.anchorDevs {
		// Not a dummy device: not every kernel has the module.
		if err := r.ns.IP("link", "add", "xdprun0", "type", "veth", "peer", "name", "xdprun1"); err != nil {
			a.close()
			return nil, err
		}
		r.anchorDevs = true
	}
	dev := fmt.Sprintf("xdprun%d", i)
	err = r.ns.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		a.link, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index, Flags: link.XDPGenericMode})
		return err
	})
	if err != nil {
		a.close()
		return nil, fmt.Errorf("attach the test-run anchor: %w", err)
	}
	return a, nil
}

func (a *anchor) close() {
	if a.link != nil {
		a.link.Close()
	}
	a.prog.Close()
	a.slots.Close()
}

// anchorMissed is what the anchor returns when its tail call fails, which
// it should never do. A program in the slot may return it too: then the
// run is repeated with the program attached itself.
const anchorMissed = 0x7ffedcba

// New returns a Runner with a network namespace of its own, a private one:
// Close removes it, and so does the end of the process, however it ends (a
// fuzzer kills its workers).
func New() (*Runner, error) {
	ns, err := netns.NewPrivate()
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

// viaAnchor puts prog in the slot of an anchor that takes it, attaches
// that anchor, and returns it; or false if no anchor takes prog (a
// multi-buffer program, say).
func (r *Runner) viaAnchor(prog *ebpf.Program) (*ebpf.Program, bool) {
	for i := range anchorTypes {
		a := r.anchors[i]
		if a == nil {
			var err error
			if a, err = r.newAnchor(i); err != nil {
				continue
			}
			r.anchors[i] = a
		}
		if a.inSlot != prog {
			if err := a.slots.Put(uint32(0), prog); err != nil {
				continue
			}
			a.inSlot = prog
		}
		return a.prog, true
	}
	return nil, false
}

// Run runs prog once with opts and returns its return value. Packets of a
// size XDP never sees give an error wrapping ErrPacketSize.
//
// Unless prog is the program attached last (Attach, Benchmark), it runs
// through the anchor when it can: a program run by tail call sees the same
// context and packet, and its return value is the anchor's.
func (r *Runner) Run(prog *ebpf.Program, opts *ebpf.RunOptions) (uint32, error) {
	if len(opts.Data) < MinPacketLen {
		return 0, fmt.Errorf("%d bytes: %w", len(opts.Data), ErrPacketSize)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ns == nil {
		return 0, errors.New("test run: runner closed")
	}
	run := prog
	if r.attached != prog {
		if a, ok := r.viaAnchor(prog); ok {
			run = a
		} else if err := r.attach(prog); err != nil {
			return 0, err
		}
	}
	ret, err := run.Run(opts)
	if err == nil && run != prog && ret == anchorMissed {
		if err := r.attach(prog); err != nil {
			return 0, err
		}
		ret, err = prog.Run(opts)
	}
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
	err := r.detach()
	for i, a := range r.anchors {
		if a != nil {
			a.close()
			r.anchors[i] = nil
		}
	}
	err = errors.Join(err, r.ns.Close())
	r.ns = nil
	return err
}
