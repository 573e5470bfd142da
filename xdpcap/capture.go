package xdpcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/perf"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// DefaultSnapLen is the snap length when Options.SnapLen is 0, as tcpdump's.
const DefaultSnapLen = 262144

// DefaultBufferSize is the ring buffer size when Options.BufferSize is 0.
// At 2 Mpps of small packets it holds about 150 ms of traffic, enough for
// the reader to get through a busy machine's scheduling delays.
const DefaultBufferSize = 32 << 20

// ErrNoProgram is returned by Start for a hook that no program has used
// yet. The first program to use a program array fixes what kind of
// programs it takes (multi-buffer support, attach type); a capture that
// came first would fix it for the XDP program, which might then fail to
// load.
var ErrNoProgram = errors.New("no XDP program uses the hook yet: load the program first")

// hasOwner reports whether a program array has an owner: a program that
// uses it, or used it, fixing the kind of programs it takes. The kernel
// tells only in the map's fdinfo.
func hasOwner(m *ebpf.Map) (bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return false, fmt.Errorf("read map fdinfo: %w", err)
	}
	return bytes.Contains(b, []byte("\nowner_prog_type:")), nil
}

// ErrClosed is returned by Capture.Read after Close.
var ErrClosed = errors.New("capture closed")

// Options configure a capture.
type Options struct {
	// Filter is the cBPF filter packets must match, for the link type of
	// the hooked interfaces (Ethernet, usually); nil captures everything.
	Filter []bpf.Instruction
	// Actions are the XDP actions to capture at the program's exits; nil
	// means all of them, an empty slice none (with Entry, for a capture at
	// entry only).
	Actions []Action
	// Entry captures packets as they enter the XDP program, before it acts
	// on them or rewrites them, too: they come with the action Entry. The
	// program must support it (see EntrySlot), or Start fails with
	// ErrNoEntry.
	Entry bool
	// SnapLen is the most bytes of a packet to capture; 0 means
	// DefaultSnapLen.
	SnapLen int
	// BufferSize is the size in bytes of the BPF ring buffer, a power of
	// two (rounded up), or with Perf the total of the per-CPU buffers; 0
	// means DefaultBufferSize.
	BufferSize int
	// Perf uses a perf event array instead of a BPF ring buffer.
	Perf bool
	// PollInterval is the longest a captured packet waits in the buffer
	// before Read returns it: the filters wake the reader only once the
	// buffer fills up, which saves microseconds per packet. 0 means 50 ms.
	PollInterval time.Duration
}

// Packet is a captured packet.
type Packet struct {
	// Hook is the index of the hook that saw the packet, in the slice
	// given to Start.
	Hook int
	// Action is what the XDP program did with the packet.
	Action Action
	// CPU is the CPU that ran the XDP program.
	CPU int
	// Time is when the filter saw the packet (the kernel's clock,
	// converted to wall time).
	Time time.Time
	// Length is the length of the whole packet, every fragment.
	Length int
	// Data is the captured bytes, at most the snap length.
	Data []byte
}

// Counts are a capture's counters for one action.
type Counts struct {
	// Seen is the number of packets the filter ran on.
	Seen uint64
	// Matched is the number of packets the filter matched.
	Matched uint64
	// Lost is the number of matched packets that could not be written to
	// the buffer (it was full).
	Lost uint64
}

func (c *Counts) add(o Counts) {
	c.Seen += o.Seen
	c.Matched += o.Matched
	c.Lost += o.Lost
}

// Stats are a capture's counters.
type Stats struct {
	// Hooks holds the counters of each hook, per action, and at index
	// Entry those of the capture at entry.
	Hooks [][NumActions + 1]Counts
	// ReaderLost counts the records the perf buffers report lost (always
	// 0 with a ring buffer). These are the same losses Counts.Lost
	// counts, as the kernel saw them; Total does not add them again.
	ReaderLost uint64
}

// Action returns the counters of action a, summed over the hooks.
func (s Stats) Action(a Action) Counts {
	var c Counts
	for _, h := range s.Hooks {
		c.add(h[a])
	}
	return c
}

// Total returns the counters summed over hooks and actions, entry
// included: a packet captured at entry and at exit counts twice.
func (s Stats) Total() Counts {
	var c Counts
	for a := range Action(numPoints) {
		c.add(s.Action(a))
	}
	return c
}

// Capture is a running capture: filter programs in the slots of one or
// more hooks, and the buffer they write to.
type Capture struct {
	hooks    []*ebpf.Map
	locks    []*hookLock
	installs []install
	progs    []*ebpf.Program
	counters *ebpf.Map
	output   *ebpf.Map
	ring     *ringReader
	pr       *perf.Reader
	poll     time.Duration
	// monoToWall converts bpf_ktime_get_ns to wall time.
	monoToWall int64

	readerLost atomic.Uint64
	// Reader state, used by ReadInto only.
	prRec     perf.Record
	rearm     bool
	deadline  time.Time
	detached  atomic.Bool
	closeOnce sync.Once
	detachMu  sync.Mutex
}

// progKind is what a hook's owner requires of the programs in it.
type progKind struct{ frags, attachXDP bool }

// errIncompatible is the kernel refusing a program in a program array
// because it differs from the array's owner.
var errIncompatible = errors.New("filter program incompatible with the hook's owner")

// install is a filter program in a hook slot.
type install struct {
	hook int
	slot uint32
	prog *ebpf.Program
	id   ebpf.ProgramID
}

// Start starts a capture on hooks: it compiles one filter program per
// hook and action and puts them in the hooks' slots. It takes each hook's
// lock first, failing with ErrHookBusy if another capture holds one, and
// removes filters a killed capture left behind. On error nothing is left in
// the hooks.
func Start(hooks []*ebpf.Map, opts Options) (_ *Capture, err error) {
	if len(hooks) == 0 {
		return nil, errors.New("xdpcap: no hook")
	}
	if len(hooks) > 1<<16 {
		return nil, errors.New("xdpcap: too many hooks")
	}
	o, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	c := &Capture{hooks: hooks, poll: o.PollInterval, rearm: true}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()

	seen := map[ebpf.MapID]int{}
	for i, h := range hooks {
		if err := CheckHook(h); err != nil {
			return nil, fmt.Errorf("hook %d: %w", i, err)
		}
		if info, err := h.Info(); err == nil {
			if id, ok := info.ID(); ok {
				if j, dup := seen[id]; dup {
					return nil, fmt.Errorf("hook %d is hook %d again", i, j)
				}
				seen[id] = i
			}
		}
		if owned, err := hasOwner(h); err != nil {
			return nil, fmt.Errorf("hook %d: %w", i, err)
		} else if !owned {
			return nil, fmt.Errorf("hook %d: %w", i, ErrNoProgram)
		}
		l, err := lockHook(h, lockWait)
		if err != nil {
			return nil, fmt.Errorf("hook %d: %w", i, err)
		}
		c.locks = append(c.locks, l)
		if _, err := clearStale(h); err != nil {
			return nil, fmt.Errorf("hook %d: %w", i, err)
		}
		if o.Entry {
			if err := checkEntry(h); err != nil {
				return nil, fmt.Errorf("hook %d: %w", i, err)
			}
		}
		for _, a := range o.points() {
			id, name, err := slotProgram(h, uint32(a))
			if err != nil {
				return nil, fmt.Errorf("hook %d: %w", i, err)
			}
			if id != 0 {
				return nil, fmt.Errorf("hook %d: slot %s holds program %d (%q), not an xdpcap filter", i, a, id, name)
			}
		}
	}

	c.counters, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "xdpcap_counters",
		Type:       ebpf.PerCPUArray,
		KeySize:    4,
		ValueSize:  cntSize,
		MaxEntries: uint32(len(hooks) * numPoints),
	})
	if err != nil {
		return nil, fmt.Errorf("create counters: %w", err)
	}

	if o.Perf {
		c.output, err = ebpf.NewMap(&ebpf.MapSpec{Name: "xdpcap_perf", Type: ebpf.PerfEventArray})
		if err != nil {
			return nil, fmt.Errorf("create perf event array: %w", err)
		}
		perCPU := o.BufferSize / runtime.NumCPU()
		c.pr, err = perf.NewReaderWithOptions(c.output, perCPU, perf.ReaderOptions{Watermark: perCPU / 4})
		if err != nil {
			return nil, fmt.Errorf("perf reader: %w", err)
		}
	} else {
		c.output, err = ebpf.NewMap(&ebpf.MapSpec{Name: "xdpcap_ring", Type: ebpf.RingBuf, MaxEntries: uint32(o.BufferSize)})
		if err != nil {
			return nil, fmt.Errorf("create ring buffer: %w", err)
		}
		c.ring, err = newRingReader(c.output)
		if err != nil {
			return nil, fmt.Errorf("ring buffer reader: %w", err)
		}
	}

	var mono unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return nil, fmt.Errorf("clock: %w", err)
	}
	c.monoToWall = time.Now().UnixNano() - mono.Nano()

	for i, h := range hooks {
		// A program array takes only programs that agree with its owner,
		// the first program that used it, on BPF_F_XDP_HAS_FRAGS and the
		// expected attach type. The kernel does not tell what the owner
		// has, so we try each kind, starting from the one that worked.
		kinds := []progKind{{false, false}, {false, true}, {true, false}, {true, true}}
		for _, a := range o.points() {
			var prog *ebpf.Program
			var id ebpf.ProgramID
			var errs []error
			for k, kind := range kinds {
				spec := progSpec{filter: o.Filter, action: a, hook: i, snapLen: o.SnapLen, perf: o.Perf,
					frags: kind.frags, attachXDP: kind.attachXDP}
				prog, id, err = c.installOne(h, &spec)
				if err == nil {
					kinds = kinds[k:]
					break
				}
				errs = append(errs, err)
				if !errors.Is(err, errIncompatible) {
					break
				}
			}
			if err != nil {
				if errors.Is(err, errIncompatible) {
					return nil, fmt.Errorf("hook %d: %w: the hook's XDP program takes no filter program of any kind xdpcap tried (%w)", i, errIncompatible, errors.Join(errs...))
				}
				return nil, fmt.Errorf("hook %d: %w", i, err)
			}
			c.progs = append(c.progs, prog)
			c.installs = append(c.installs, install{hook: i, slot: uint32(a), prog: prog, id: id})
		}
		// The filters are in: the links running the hook's quiet twin
		// run the program that calls them from now on.
		if err := swapLinks(h, QuietSlot, LoudSlot); err != nil {
			return nil, fmt.Errorf("hook %d: %w", i, err)
		}
	}
	return c, nil
}

func (c *Capture) installOne(hook *ebpf.Map, spec *progSpec) (*ebpf.Program, ebpf.ProgramID, error) {
	prog, err := spec.load(c.counters, c.output, hook)
	if err != nil {
		return nil, 0, err
	}
	info, err := prog.Info()
	if err != nil {
		prog.Close()
		return nil, 0, fmt.Errorf("%s filter info: %w", spec.action, err)
	}
	id, _ := info.ID()
	if err := hook.Update(uint32(spec.action), prog, ebpf.UpdateAny); err != nil {
		prog.Close()
		if errors.Is(err, unix.EINVAL) {
			err = fmt.Errorf("%w: %w", errIncompatible, err)
		}
		return nil, 0, fmt.Errorf("put %s filter in the hook: %w", spec.action, err)
	}
	return prog, id, nil
}

func (o Options) normalize() (Options, error) {
	if o.SnapLen == 0 {
		o.SnapLen = DefaultSnapLen
	}
	if o.SnapLen < 1 || o.SnapLen > DefaultSnapLen {
		return o, fmt.Errorf("xdpcap: snap length %d: want 1 to %d", o.SnapLen, DefaultSnapLen)
	}
	if o.BufferSize == 0 {
		o.BufferSize = DefaultBufferSize
	}
	if o.BufferSize < os.Getpagesize() {
		return o, fmt.Errorf("xdpcap: buffer size %d: want at least %d bytes", o.BufferSize, os.Getpagesize())
	}
	size := os.Getpagesize()
	for size < o.BufferSize {
		size <<= 1
	}
	o.BufferSize = size
	if !o.Perf && o.BufferSize < 4*(o.SnapLen+recHdrSize+8) {
		return o, fmt.Errorf("xdpcap: buffer of %d bytes too small for snap length %d: want at least %d", o.BufferSize, o.SnapLen, 4*(o.SnapLen+recHdrSize+8))
	}
	if o.Perf && o.BufferSize/runtime.NumCPU() < 2*(o.SnapLen+recHdrSize+16) {
		return o, fmt.Errorf("xdpcap: per-CPU buffer of %d bytes too small for snap length %d", o.BufferSize/runtime.NumCPU(), o.SnapLen)
	}
	if o.Actions == nil {
		o.Actions = Actions
	}
	if len(o.Actions) == 0 && !o.Entry {
		return o, errors.New("xdpcap: nothing to capture: no action and no entry")
	}
	seen := map[Action]bool{}
	for _, a := range o.Actions {
		if a >= NumActions {
			return o, fmt.Errorf("xdpcap: %w", fmt.Errorf("unknown action %d", a))
		}
		if seen[a] {
			return o, fmt.Errorf("xdpcap: action %s given twice", a)
		}
		seen[a] = true
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 50 * time.Millisecond
	}
	return o, nil
}

// points returns the hook slots the capture fills: its actions, and the
// entry slot for an entry capture.
func (o Options) points() []Action {
	if !o.Entry {
		return o.Actions
	}
	return append(slices.Clone(o.Actions), Entry)
}

// Validate checks the options as Start does before it touches a hook or
// the kernel, the filter's compilation included.
func (o Options) Validate() error {
	o, err := o.normalize()
	if err != nil {
		return err
	}
	for _, a := range o.points() {
		spec := progSpec{filter: o.Filter, action: a, snapLen: o.SnapLen, perf: o.Perf}
		if _, err := spec.instructions(); err != nil {
			return fmt.Errorf("xdpcap: %w", err)
		}
	}
	return nil
}

// checkEntry returns an error wrapping ErrNoEntry unless hook has an entry
// slot and a body in its body slot.
func checkEntry(hook *ebpf.Map) error {
	if hook.MaxEntries() <= BodySlot {
		return fmt.Errorf("%w: the hook has %d slots, not %d (built with an xdpcap.h older than entry capture?)", ErrNoEntry, hook.MaxEntries(), BodySlot+1)
	}
	id, _, err := slotProgram(hook, BodySlot)
	if err != nil {
		return err
	}
	if id == 0 {
		return fmt.Errorf("%w: no body program in slot %d (the program must start with xdpcap_entry and its loader put its body there)", ErrNoEntry, BodySlot)
	}
	return nil
}

// Read returns the next captured packet, waiting for one. After Detach it
// returns the packets still buffered, then io.EOF; after Close, ErrClosed.
// Read and ReadInto must not be called concurrently.
func (c *Capture) Read() (Packet, error) {
	var p Packet
	if err := c.ReadInto(&p); err != nil {
		return Packet{}, err
	}
	p.Data = bytes.Clone(p.Data)
	return p, nil
}

// ReadInto is Read without an allocation or a copy per packet: p.Data
// points into the capture's buffer, valid until the next ReadInto.
func (c *Capture) ReadInto(p *Packet) error {
	for {
		// A deadline is armed only when the last read waited it out:
		// setting one per record costs more than the record.
		if c.rearm {
			c.rearm = false
			c.deadline = time.Now().Add(c.poll)
			if c.pr != nil {
				c.pr.SetDeadline(c.deadline)
			}
		}
		var raw []byte
		var err error
		if c.ring != nil {
			raw, err = c.ring.next(c.deadline)
		} else {
			err = c.pr.ReadInto(&c.prRec)
			if err == nil && c.prRec.LostSamples > 0 {
				c.readerLost.Add(c.prRec.LostSamples)
				continue
			}
			raw = c.prRec.RawSample
		}
		switch {
		case err == nil:
			return c.parse(raw, p)
		case errors.Is(err, os.ErrDeadlineExceeded):
			if c.detached.Load() {
				return io.EOF
			}
			c.rearm = true
		case errors.Is(err, errRingClosed), errors.Is(err, perf.ErrClosed), errors.Is(err, os.ErrClosed):
			return ErrClosed
		default:
			return fmt.Errorf("read capture buffer: %w", err)
		}
	}
}

func (c *Capture) parse(raw []byte, p *Packet) error {
	if len(raw) < recHdrSize {
		return fmt.Errorf("capture record of %d bytes, shorter than its header", len(raw))
	}
	le := binary.NativeEndian
	capLen := int(le.Uint32(raw[recCapLen:]))
	if recHdrSize+capLen > len(raw) {
		return fmt.Errorf("capture record of %d bytes holds %d captured bytes", len(raw), capLen)
	}
	*p = Packet{
		Hook:   int(le.Uint16(raw[recHook:])),
		Action: Action(le.Uint16(raw[recAction:])),
		CPU:    int(le.Uint32(raw[recCPU:])),
		Time:   time.Unix(0, int64(le.Uint64(raw[recTime:]))+c.monoToWall),
		Length: int(le.Uint32(raw[recLen:])),
		Data:   raw[recHdrSize : recHdrSize+capLen : recHdrSize+capLen],
	}
	return nil
}

// Stats returns the capture's counters.
func (c *Capture) Stats() (Stats, error) {
	s := Stats{Hooks: make([][numPoints]Counts, len(c.hooks)), ReaderLost: c.readerLost.Load()}
	for h := range c.hooks {
		for a := range Action(numPoints) {
			var perCPU [][cntSize]byte
			if err := c.counters.Lookup(uint32(h*numPoints+int(a)), &perCPU); err != nil {
				return s, fmt.Errorf("read counters: %w", err)
			}
			for _, v := range perCPU {
				le := binary.NativeEndian
				s.Hooks[h][a].add(Counts{
					Seen:    le.Uint64(v[cntSeen:]),
					Matched: le.Uint64(v[cntMatched:]),
					Lost:    le.Uint64(v[cntLost:]),
				})
			}
		}
	}
	return s, nil
}

// Detach takes the filters out of the hooks: the capture stops, the XDP
// programs run as if nobody captured, and Read returns what is still
// buffered and then io.EOF. A slot is emptied only if it still holds this
// capture's filter.
func (c *Capture) Detach() error {
	c.detachMu.Lock()
	defer c.detachMu.Unlock()
	var errs []error
	filled := map[int]bool{}
	for _, in := range c.installs {
		filled[in.hook] = true
		var v uint32
		if err := c.hooks[in.hook].Lookup(in.slot, &v); err != nil || ebpf.ProgramID(v) != in.id {
			continue
		}
		if err := c.hooks[in.hook].Delete(in.slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("hook %d: remove %s filter: %w", in.hook, Action(in.slot), err))
		}
	}
	for i := range filled {
		if err := quieten(c.hooks[i]); err != nil {
			errs = append(errs, fmt.Errorf("hook %d: %w", i, err))
		}
	}
	c.installs = nil
	c.detached.Store(true)
	return errors.Join(errs...)
}

// Close detaches the filters, releases the hooks and frees the buffer.
// Read returns ErrClosed after it.
func (c *Capture) Close() error {
	err := c.Detach()
	c.closeOnce.Do(func() {
		if c.ring != nil {
			c.ring.close()
		}
		if c.pr != nil {
			c.pr.Close()
		}
		for _, l := range c.locks {
			l.unlock()
		}
		for _, p := range c.progs {
			p.Close()
		}
		if c.output != nil {
			c.output.Close()
		}
		if c.counters != nil {
			c.counters.Close()
		}
	})
	return err
}
