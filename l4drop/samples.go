package l4drop

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/perf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/xdpcap"
)

// sampleHeader is the size of struct l4_sample, before the packet bytes.
const sampleHeader = 24

// Sample is a packet the program sent to user space.
type Sample struct {
	Time   time.Time
	CPU    int
	Rule   uint32 // index, or NoRule
	Name   string // rule name, or "" for NoRule
	Action string // drop, pass, ...
	Len    int    // length on the wire
	Data   []byte // first bytes, up to the snap length
}

// SampleReader reads samples of a loaded rule set.
type SampleReader struct {
	rd     *perf.Reader
	mu     sync.Mutex
	names  []string
	offset time.Duration // wall clock minus monotonic clock
}

// NewSampleReader reads samples from the rule set in h, with a ring of
// perCPU bytes on each CPU (0: 1 MiB). Read wakes up once a ring holds
// watermark bytes (0: every sample); a wake-up per sample costs an
// interrupt per packet, so high rates want a watermark and a periodic
// Flush. While the reader is slow, the program counts the samples it cannot
// write as lost.
func (h *Handle) NewSampleReader(perCPU, watermark int) (*SampleReader, error) {
	if perCPU <= 0 {
		perCPU = 1 << 20
	}
	rd, err := perf.NewReaderWithOptions(h.Samples, perCPU, perf.ReaderOptions{Watermark: watermark})
	if err != nil {
		return nil, fmt.Errorf("sample reader: %w", err)
	}
	r := &SampleReader{rd: rd}
	for _, mr := range h.State.Meta.Rules {
		r.names = append(r.names, mr.Name)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err == nil {
		r.offset = time.Since(time.Unix(0, 0)) - time.Duration(ts.Nano())
	}
	return r, nil
}

// SetRules makes the reader name rules after the state of a reloaded rule
// set that kept the same sample map.
func (r *SampleReader) SetRules(st *State) {
	names := make([]string, len(st.Meta.Rules))
	for i, mr := range st.Meta.Rules {
		names[i] = mr.Name
	}
	r.mu.Lock()
	r.names = names
	r.mu.Unlock()
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (r *SampleReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Flush makes samples buffered below the wake-up watermark readable: Read
// returns them, then ErrFlushed.
func (r *SampleReader) Flush() error { return r.rd.Flush() }

// ErrFlushed is returned by Read once it has returned the samples pending
// when Flush was called.
var ErrFlushed = perf.ErrFlushed

// Read returns the next sample; io.EOF once the reader is closed,
// os.ErrDeadlineExceeded, or ErrFlushed after a Flush.
func (r *SampleReader) Read() (Sample, error) {
	for {
		rec, err := r.rd.Read()
		if err != nil {
			if errors.Is(err, perf.ErrClosed) {
				return Sample{}, io.EOF
			}
			if errors.Is(err, perf.ErrFlushed) {
				return Sample{}, ErrFlushed
			}
			return Sample{}, err
		}
		if rec.LostSamples > 0 || len(rec.RawSample) < sampleHeader {
			continue
		}
		return r.decode(rec.CPU, rec.RawSample)
	}
}

func (r *SampleReader) decode(cpu int, raw []byte) (Sample, error) {
	ktime := binary.NativeEndian.Uint64(raw[0:])
	rule := binary.NativeEndian.Uint32(raw[8:])
	action := binary.NativeEndian.Uint32(raw[12:])
	length := binary.NativeEndian.Uint32(raw[16:])
	capLen := binary.NativeEndian.Uint32(raw[20:])
	data := raw[sampleHeader:]
	if int(capLen) > len(data) {
		return Sample{}, fmt.Errorf("sample: %d bytes captured, record holds %d", capLen, len(data))
	}
	s := Sample{
		Time: time.Unix(0, 0).Add(r.offset + time.Duration(ktime)), CPU: cpu,
		Rule: rule, Action: ActionName(action), Len: int(length),
		Data: append([]byte(nil), data[:capLen]...),
	}
	r.mu.Lock()
	if int(rule) < len(r.names) {
		s.Name = r.names[rule]
	}
	r.mu.Unlock()
	return s, nil
}

// Close stops reading.
func (r *SampleReader) Close() error { return r.rd.Close() }

// ActionName names an XDP action as rules do: "drop", "pass", and so on;
// "action7" for a value that is no XDP action.
func ActionName(a uint32) string {
	if a >= xdpcap.NumActions {
		return fmt.Sprintf("action%d", a)
	}
	return xdpcap.Action(a).Name()
}

// IPOffset returns where the IP header starts in an Ethernet frame, after
// up to two VLAN tags (802.1Q, 802.1ad), as the program's family dispatch
// finds it. ok is false for frames that carry no IPv4 or IPv6.
func IPOffset(frame []byte) (off int, ok bool) {
	off = 12
	for tags := 0; ; tags++ {
		if len(frame) < off+2 {
			return 0, false
		}
		et := uint16(frame[off])<<8 | uint16(frame[off+1])
		switch {
		case (et == 0x8100 || et == 0x88a8) && tags < 2:
			off += 4
		case et == 0x0800 || et == 0x86dd:
			return off + 2, true
		default:
			return 0, false
		}
	}
}

// SampleWriter writes samples as pcapng, each packet with a comment naming
// its rule and action ("rule=NAME action=drop", rule=- when none matched).
type SampleWriter struct {
	w *pcapgo.NgWriter
}

// NewSampleWriter starts a pcapng stream on w.
func NewSampleWriter(w io.Writer, iface string, snaplen uint32) (*SampleWriter, error) {
	host, _ := os.Hostname()
	ng, err := pcapgo.NewNgWriterInterface(w, pcapgo.NgInterface{
		Name: iface, Description: "l4drop samples", LinkType: layers.LinkTypeEthernet,
		SnapLength: snaplen, TimestampResolution: 9,
	}, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "l4drop", OS: "Linux", Comment: host}})
	if err != nil {
		return nil, fmt.Errorf("pcapng: %w", err)
	}
	return &SampleWriter{w: ng}, nil
}

// Write writes one sample.
func (sw *SampleWriter) Write(s Sample) error {
	name := s.Name
	if name == "" {
		name = "-"
	}
	ci := gopacket.CaptureInfo{Timestamp: s.Time, CaptureLength: len(s.Data), Length: s.Len}
	return sw.w.WritePacketWithOptions(ci, s.Data, pcapgo.NgPacketOptions{
		Comments: []string{fmt.Sprintf("rule=%s action=%s", name, s.Action)},
	})
}

// Flush writes buffered output.
func (sw *SampleWriter) Flush() error { return sw.w.Flush() }

// WriteSamples writes the rule set's samples to w as pcapng until ctx ends
// or count samples (0: no limit), and returns how many it wrote. A reader
// of w that goes away (EPIPE) ends it without an error.
func (h *Handle) WriteSamples(ctx context.Context, w io.Writer, count int) (int, error) {
	bw := bufio.NewWriter(w)
	sw, err := NewSampleWriter(bw, h.State.Iface, h.State.Meta.Snaplen)
	if err != nil {
		return 0, err
	}
	// Wake up per 16 KiB, and flush what is below that twice a second.
	rd, err := h.NewSampleReader(0, 16<<10)
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	flush := func() error {
		if err := sw.Flush(); err != nil {
			return err
		}
		return bw.Flush()
	}
	n := 0
	var lastFlush time.Time
	flushed := false
	for count == 0 || n < count {
		if ctx.Err() != nil && !flushed {
			// Read returns what is pending, then ErrFlushed.
			rd.Flush()
			flushed = true
		}
		rd.SetDeadline(time.Now().Add(500 * time.Millisecond))
		s, err := rd.Read()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			rd.Flush()
			continue
		case errors.Is(err, ErrFlushed):
			if flushed {
				return n, ignorePipe(flush())
			}
			continue
		case err != nil:
			return n, err
		}
		if err := sw.Write(s); err != nil {
			return n, ignorePipe(err)
		}
		n++
		if time.Since(lastFlush) > 200*time.Millisecond {
			if err := flush(); err != nil {
				return n, ignorePipe(err)
			}
			lastFlush = time.Now()
		}
	}
	return n, ignorePipe(flush())
}

func ignorePipe(err error) error {
	if errors.Is(err, syscall.EPIPE) {
		return nil
	}
	return err
}
