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
// fails with ErrInterpreter should the two disagree.
// Packets longer than the first buffer of a test run (about 3.5 KiB) are
// passed as multi-buffer packets; like live XDP the filter then reads
// only the first buffer.
type TestFilter struct {
	interp   *interpreter // nil: every packet goes to the kernel
	all      bool         // no filter: every packet matches
	snapLen  int
	runs     uint64 // packets the interpreter judged
	prog     *ebpf.Program
	counters *ebpf.Map
	output   *ebpf.Map
	rb       *ringbuf.Reader
	runner   *xdprun.Runner
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
	f.output, err = ebpf.NewMap(&ebpf.MapSpec{Name: "xdpcap_ring", Type: ebpf.RingBuf, MaxEntries: uint32(o.BufferSize)})
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
	if f.runner, err = xdprun.New(); err != nil {
		return nil, err
	}
	if err := f.runner.Attach(f.prog); err != nil {
		return nil, err
	}
	return f, nil
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

// interpMaxLen is the longest packet the interpreter takes: the first
// buffer of a test run is about 3.5 KiB, and longer packets are
// multi-buffer ones, whose first buffer alone the filter reads.
const interpMaxLen = 3000

// Match runs the filter over pkt and returns whether it matched and, if so,
// the packet as captured (its Data may share pkt's memory).
func (f *TestFilter) Match(pkt []byte) (bool, Packet, error) {
	if (f.all || f.interp != nil) && len(pkt) >= MinPacketLen && len(pkt) <= interpMaxLen {
		ok := f.all
		if !ok {
			res, err := f.interp.match(pkt)
			if errors.Is(err, errInterp) {
				return f.matchKernel(pkt)
			}
			if err != nil {
				return false, Packet{}, err
			}
			ok = res != 0
		}
		f.runs++
		p := Packet{Action: Pass, Length: len(pkt), Data: pkt[:min(len(pkt), f.snapLen)]}
		if f.runs <= verifyFirst || f.runs%verifyEvery == 0 {
			kok, kp, err := f.matchKernel(pkt)
			if err != nil {
				return false, Packet{}, err
			}
			if kok != ok || ok && !bytes.Equal(kp.Data, p.Data) {
				return false, Packet{}, fmt.Errorf("%w: packet of %d bytes: interpreter says match %v, kernel %v", ErrInterpreter, len(pkt), ok, kok)
			}
		}
		if !ok {
			return false, Packet{}, nil
		}
		return true, p, nil
	}
	return f.matchKernel(pkt)
}

// matchKernel is Match through a test run of the capture program.
func (f *TestFilter) matchKernel(pkt []byte) (bool, Packet, error) {
	ret, err := f.runner.Run(f.prog, &ebpf.RunOptions{Data: pkt})
	if err != nil {
		return false, Packet{}, err
	}
	if Action(ret) != Pass {
		return false, Packet{}, fmt.Errorf("test run returned %v, want %v", Action(ret), Pass)
	}
	if f.rb.AvailableBytes() == 0 {
		return false, Packet{}, nil
	}
	for range 3 {
		f.rb.SetDeadline(time.Now())
		rec, err := f.rb.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return false, Packet{}, fmt.Errorf("read ring buffer: %w", err)
		}
		var c Capture
		var p Packet
		err = c.parse(rec.RawSample, &p)
		p.Time = time.Time{}
		return err == nil, p, err
	}
	return false, Packet{}, errors.New("ring buffer has data but gives no record")
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
