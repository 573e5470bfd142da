package xdpcap

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/xdprun"
)

// TestFilter runs a capture filter over packets in the kernel with
// BPF_PROG_TEST_RUN: the very program a live capture puts in a hook (the
// XDP_PASS one), writing to a ring buffer of its own. A packet matches when
// the program wrote a record of it, so the copy is tested too.
//
// A test run of an XDP program attached nowhere costs a synchronize_rcu
// (about 50 ms); TestFilter keeps its program attached, in generic mode, to
// the loopback of a network namespace of its own, so a run costs
// microseconds.
//
// The program sees what XDP would see: the packet is the captured bytes (the
// cBPF len extension is the captured length, not the length on the wire).
//
// A test run costs microseconds, so filters that read only the packet
// run in xdpcap's own interpreter of the filter's eBPF code (the very
// instructions the kernel runs), tens of nanoseconds a packet; the kernel
// runs the first packets and one in verifyEvery after them too, and Match
// fails with ErrInterpreter should the two disagree, on the verdict, the
// captured bytes or the length of the packet's first buffer.
// Packets longer than the first buffer of a test run (about 3.5 KiB) are
// passed as multi-buffer packets; like live XDP the filter then reads
// only the first buffer. The interpreter learns that buffer's length from
// the context the kernel gives back after a test run of a page-long
// packet, and every checked packet checks it again.
type TestFilter struct {
	interp  *interpreter // nil: every packet goes to the kernel
	all     bool         // no filter: every packet matches
	snapLen int
	runs    uint64 // packets the interpreter judged
	// What the kernel's runs taught: the longest packet that reached the
	// program whole, the length of a multi-buffer packet's first buffer
	// (0: none seen yet), the longest packet run, and the shortest packet
	// refused as too long for a multi-buffer packet (0: none yet).
	whole, linear, accepted, tooBig int
	prog                            *ebpf.Program
	counters                        *ebpf.Map
	output                          *ebpf.Map
	rb                              *ringbuf.Reader
	runner                          *xdprun.Runner
}

// NewTestFilter loads filter (nil: match everything) as a capture program
// with the given snap length (0: DefaultSnapLen).
func NewTestFilter(filter []bpf.Instruction, snapLen int) (_ *TestFilter, err error) {
	o, err := Options{Filter: filter, SnapLen: snapLen}.normalize()
	if err != nil {
		return nil, err
	}
	f := &TestFilter{snapLen: o.SnapLen, all: o.Filter == nil}
	if o.Filter != nil {
		f.interp, err = newInterpreter(o.Filter)
		if errors.Is(err, errInterp) {
			f.interp = nil
		} else if err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	f.counters, err = ebpf.NewMap(&ebpf.MapSpec{Name: "xdpcap_counters", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: cntSize, MaxEntries: NumActions})
	if err != nil {
		return nil, fmt.Errorf("create counters: %w", err)
	}
	f.output, err = ebpf.NewMap(&ebpf.MapSpec{Name: "xdpcap_ring", Type: ebpf.RingBuf, MaxEntries: testRingSize(o.SnapLen)})
	if err != nil {
		return nil, fmt.Errorf("create ring buffer: %w", err)
	}
	f.rb, err = ringbuf.NewReader(f.output)
	if err != nil {
		return nil, fmt.Errorf("ring buffer reader: %w", err)
	}
	spec := progSpec{filter: o.Filter, action: Pass, snapLen: o.SnapLen, frags: true}
	f.prog, err = spec.load(f.counters, f.output, nil)
	if err != nil {
		return nil, err
	}
	// Single test runs, which need no attachment (see xdprun).
	if f.runner, err = xdprun.New(); err != nil {
		return nil, err
	}
	// A page is too long for the first buffer of a test run, which has
	// its headroom and tailroom: the run tells the interpreter how long
	// that buffer is.
	if _, _, _, err := f.matchKernel(make([]byte, os.Getpagesize())); err != nil {
		return nil, fmt.Errorf("test run of a page: %w", err)
	}
	return f, nil
}

// testRingSize is the size of a TestFilter's ring buffer: it holds one
// record at a time, read after each run, so the largest record fits, and
// no more: a live capture's 32 MiB cost milliseconds to set up and tear
// down.
func testRingSize(snapLen int) uint32 {
	size := os.Getpagesize()
	for size < recHdrSize+snapLen+8 { // 8: the ring buffer's record header
		size <<= 1
	}
	return uint32(size)
}

// MinPacketLen is the shortest packet XDP handles: an Ethernet header.
// Test runs refuse shorter data, and no XDP program ever sees less.
const MinPacketLen = xdprun.MinPacketLen

// ErrPacketSize is returned by TestFilter.Match for packets of a size XDP
// never handles: shorter than MinPacketLen, or longer than a multi-buffer
// packet can be (about 17 pages).
var ErrPacketSize = xdprun.ErrPacketSize

// ErrInterpreter is returned by TestFilter.Match when xdpcap's interpreter
// of the filter and the kernel disagree on a packet: a bug to report.
var ErrInterpreter = errors.New("xdpcap's filter interpreter and the kernel disagree")

// Packets the interpreter judges are judged by the kernel too: the first
// verifyFirst, then one in verifyEvery.
const (
	verifyFirst = 256
	verifyEvery = 1024
)

// firstBuffer returns how many bytes of a packet of n bytes the filter
// sees, the first buffer of a test run, if the kernel's runs so far tell:
// packets no longer than one it ran whole are whole, and those no longer
// than one it ran at all have the first buffer its multi-buffer packets
// had. A packet longer than any the kernel ran may be one it refuses.
func (f *TestFilter) firstBuffer(n int) (int, bool) {
	switch {
	case n <= f.whole:
		return n, true
	case f.linear > 0 && n <= f.accepted:
		return f.linear, true
	}
	return 0, false
}

// Match runs the filter over pkt and returns whether it matched and, if so,
// the packet as captured (its Data may share pkt's memory).
func (f *TestFilter) Match(pkt []byte) (bool, Packet, error) {
	if f.tooBig > 0 && len(pkt) >= f.tooBig {
		// The kernel refuses a packet for its length alone.
		return false, Packet{}, fmt.Errorf("%d bytes: %w", len(pkt), ErrPacketSize)
	}
	first, known := f.firstBuffer(len(pkt))
	if !known || f.interp == nil && !f.all || len(pkt) < MinPacketLen {
		ok, p, _, err := f.matchKernel(pkt)
		return ok, p, err
	}
	ok := f.all
	if !ok {
		res, err := f.interp.match(pkt[:first])
		if errors.Is(err, errInterp) {
			ok, p, _, err := f.matchKernel(pkt)
			return ok, p, err
		}
		if err != nil {
			return false, Packet{}, err
		}
		ok = res != 0
	}
	f.runs++
	p := Packet{Action: Pass, Length: len(pkt), Data: pkt[:min(len(pkt), f.snapLen)]}
	if f.runs <= verifyFirst || f.runs%verifyEvery == 0 {
		kok, kp, kfirst, err := f.matchKernel(pkt)
		if err != nil {
			return false, Packet{}, err
		}
		if kok != ok || ok && !bytes.Equal(kp.Data, p.Data) || kfirst != first {
			return false, Packet{}, fmt.Errorf("%w: packet of %d bytes: interpreter says match %v (first buffer %d bytes), kernel %v (%d bytes)",
				ErrInterpreter, len(pkt), ok, first, kok, kfirst)
		}
	}
	if !ok {
		return false, Packet{}, nil
	}
	return true, p, nil
}

// xdpMD is struct xdp_md, the context a test run takes and gives back.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// matchKernel is Match through a test run of the capture program. It
// also returns the length of the packet's first buffer, which it learns
// from: the kernel's context gives it back.
func (f *TestFilter) matchKernel(pkt []byte) (bool, Packet, int, error) {
	var out xdpMD
	ret, err := f.runner.Run(f.prog, &ebpf.RunOptions{Data: pkt, Context: xdpMD{DataEnd: uint32(len(pkt))}, ContextOut: &out})
	if errors.Is(err, ErrPacketSize) && len(pkt) >= MinPacketLen && (f.tooBig == 0 || len(pkt) < f.tooBig) {
		f.tooBig = len(pkt)
	}
	if err != nil {
		return false, Packet{}, 0, err
	}
	if Action(ret) != Pass {
		return false, Packet{}, 0, fmt.Errorf("test run returned %v, want %v", Action(ret), Pass)
	}
	first := int(out.DataEnd - out.Data)
	switch {
	case first < MinPacketLen || first > len(pkt):
		return false, Packet{}, 0, fmt.Errorf("test run of %d bytes gave back a first buffer of %d", len(pkt), first)
	case first < len(pkt) && f.linear == 0:
		f.linear = first
		f.whole = max(f.whole, first)
	case first == len(pkt):
		f.whole = max(f.whole, first)
	}
	f.accepted = max(f.accepted, len(pkt))
	if f.rb.AvailableBytes() == 0 {
		return false, Packet{}, first, nil
	}
	for range 3 {
		f.rb.SetDeadline(time.Now())
		rec, err := f.rb.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return false, Packet{}, 0, fmt.Errorf("read ring buffer: %w", err)
		}
		var c Capture
		var p Packet
		err = c.parse(rec.RawSample, &p)
		p.Time = time.Time{}
		return err == nil, p, first, err
	}
	return false, Packet{}, 0, errors.New("ring buffer has data but gives no record")
}

// Close detaches and frees the filter and removes its namespace.
func (f *TestFilter) Close() error {
	var errs []error
	if f.runner != nil {
		errs = append(errs, f.runner.Close())
	}
	if f.rb != nil {
		f.rb.Close()
	}
	if f.prog != nil {
		f.prog.Close()
	}
	if f.output != nil {
		f.output.Close()
	}
	if f.counters != nil {
		f.counters.Close()
	}
	return errors.Join(errs...)
}
