package xdpcap

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// PacketWriter writes captured packets to a capture file.
type PacketWriter interface {
	// WritePacket writes one packet. It may buffer.
	WritePacket(Packet) error
	// Flush writes out what is buffered.
	Flush() error
}

// writeBufferSize is the capture writers' buffer: a write system call per
// megabyte keeps a reader at millions of packets a second.
const writeBufferSize = 1 << 20

// PcapWriter writes pcap files with nanosecond timestamps. The format has
// no room for the action or the hook: use pcapng for those.
//
// Records are encoded by hand, straight into the buffer: at millions of
// packets a second a general-purpose encoder's per-packet cost is what
// makes a capture lose packets.
type PcapWriter struct {
	buf *bufio.Writer
	hdr [16]byte
}

// NewPcapWriter writes the file header and returns a writer of packets of
// link type lt.
func NewPcapWriter(w io.Writer, lt layers.LinkType, snapLen int) (*PcapWriter, error) {
	buf := bufio.NewWriterSize(w, writeBufferSize)
	pw := pcapgo.NewWriterNanos(buf)
	if err := pw.WriteFileHeader(uint32(snapLen), lt); err != nil {
		return nil, fmt.Errorf("write pcap header: %w", err)
	}
	return &PcapWriter{buf: buf}, nil
}

// WritePacket implements PacketWriter.
func (w *PcapWriter) WritePacket(p Packet) error {
	ns := p.Time.UnixNano()
	le := binary.LittleEndian // as pcapgo writes the file header
	le.PutUint32(w.hdr[0:], uint32(ns/1e9))
	le.PutUint32(w.hdr[4:], uint32(ns%1e9))
	le.PutUint32(w.hdr[8:], uint32(len(p.Data)))
	le.PutUint32(w.hdr[12:], uint32(max(p.Length, len(p.Data))))
	if _, err := w.buf.Write(w.hdr[:]); err != nil {
		return fmt.Errorf("write pcap: %w", err)
	}
	if _, err := w.buf.Write(p.Data); err != nil {
		return fmt.Errorf("write pcap: %w", err)
	}
	return nil
}

// Flush implements PacketWriter.
func (w *PcapWriter) Flush() error { return w.buf.Flush() }

// PcapngWriter writes pcapng files that record each packet's hook and
// action twice over, so that every reader shows them:
//   - each (hook, action) pair is an interface of its own, named
//     "HOOKNAME:XDPPass", or "HOOKNAME:Entry" for packets captured at
//     entry (Wireshark shows it in the frame's interface field);
//   - each enhanced packet block carries the action as an epb_verdict
//     option (code 7, type 2: Linux eBPF XDP, with the 64-bit action),
//     which Wireshark shows as the frame's verdict, and as a comment
//     ("XDP_DROP"); packets captured at entry have no verdict, and the
//     comment "entry, before the XDP program".
//
// Timestamps are in nanoseconds (if_tsresol 9).
//
// The blocks are written by hand: pcapgo's NgWriter cannot write the
// verdict option. The format is little endian, as the byte-order magic of
// the section header says.
type PcapngWriter struct {
	buf       *bufio.Writer
	lt        layers.LinkType
	snapLen   int
	hookNames []string
	ifaces    map[[2]int]uint32 // (hook, action) → interface ID
	block     []byte
}

// pcapng block types and option codes.
const (
	ngSHB        = 0x0A0D0D0A
	ngIDB        = 1
	ngEPB        = 6
	ngOptEnd     = 0
	ngOptComment = 1
	ngIfName     = 2
	ngIfDesc     = 3
	ngIfTSResol  = 9
	ngShbUserApp = 4
	ngEpbVerdict = 7
	// ngVerdictXDP is the epb_verdict type of a Linux eBPF XDP verdict.
	ngVerdictXDP = 2
)

// NewPcapngWriter writes the section header and returns a writer of
// packets of link type lt. hookNames name the hooks, by index, in the
// interface names.
func NewPcapngWriter(w io.Writer, lt layers.LinkType, snapLen int, hookNames []string) (*PcapngWriter, error) {
	pw := &PcapngWriter{
		buf:       bufio.NewWriterSize(w, writeBufferSize),
		lt:        lt,
		snapLen:   snapLen,
		hookNames: hookNames,
		ifaces:    map[[2]int]uint32{},
	}
	b := pw.begin(ngSHB)
	b = binary.LittleEndian.AppendUint32(b, 0x1A2B3C4D)
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint64(b, ^uint64(0)) // section length unknown
	b = appendOption(b, ngShbUserApp, []byte("xdpcap"))
	b = appendOption(b, ngOptEnd, nil)
	if err := pw.end(b); err != nil {
		return nil, err
	}
	return pw, nil
}

func (w *PcapngWriter) begin(typ uint32) []byte {
	b := w.block[:0]
	b = binary.LittleEndian.AppendUint32(b, typ)
	return binary.LittleEndian.AppendUint32(b, 0) // length, set by end
}

func (w *PcapngWriter) end(b []byte) error {
	n := uint32(len(b) + 4)
	binary.LittleEndian.PutUint32(b[4:], n)
	b = binary.LittleEndian.AppendUint32(b, n)
	w.block = b
	if _, err := w.buf.Write(b); err != nil {
		return fmt.Errorf("write pcapng: %w", err)
	}
	return nil
}

func appendOption(b []byte, code uint16, val []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, code)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(val)))
	b = append(b, val...)
	return appendPad(b, len(val))
}

func appendPad(b []byte, n int) []byte {
	for ; n%4 != 0; n++ {
		b = append(b, 0)
	}
	return b
}

func (w *PcapngWriter) iface(hook int, a Action) (uint32, error) {
	if id, ok := w.ifaces[[2]int{hook, int(a)}]; ok {
		return id, nil
	}
	name := fmt.Sprintf("hook%d", hook)
	if hook < len(w.hookNames) {
		name = w.hookNames[hook]
	}
	id := uint32(len(w.ifaces))
	b := w.begin(ngIDB)
	b = binary.LittleEndian.AppendUint16(b, uint16(w.lt))
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(w.snapLen))
	b = appendOption(b, ngIfName, []byte(name+":"+a.String()))
	desc := fmt.Sprintf("xdpcap hook %s, packets the XDP program ended with %s", name, a.KernelName())
	if a == Entry {
		desc = fmt.Sprintf("xdpcap hook %s, packets as they entered the XDP program", name)
	}
	b = appendOption(b, ngIfDesc, []byte(desc))
	b = appendOption(b, ngIfTSResol, []byte{9})
	b = appendOption(b, ngOptEnd, nil)
	if err := w.end(b); err != nil {
		return 0, err
	}
	w.ifaces[[2]int{hook, int(a)}] = id
	return id, nil
}

// entryComment is the comment of packets captured at entry.
const entryComment = "entry, before the XDP program"

// WritePacket implements PacketWriter.
func (w *PcapngWriter) WritePacket(p Packet) error {
	id, err := w.iface(p.Hook, p.Action)
	if err != nil {
		return err
	}
	ts := uint64(p.Time.UnixNano())
	b := w.begin(ngEPB)
	b = binary.LittleEndian.AppendUint32(b, id)
	b = binary.LittleEndian.AppendUint32(b, uint32(ts>>32))
	b = binary.LittleEndian.AppendUint32(b, uint32(ts))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Data)))
	b = binary.LittleEndian.AppendUint32(b, uint32(p.Length))
	b = append(b, p.Data...)
	b = appendPad(b, len(p.Data))
	if p.Action == Entry {
		// No verdict yet: the program has not seen the packet.
		b = appendOption(b, ngOptComment, []byte(entryComment))
	} else {
		var verdict [9]byte
		verdict[0] = ngVerdictXDP
		binary.LittleEndian.PutUint64(verdict[1:], uint64(p.Action))
		b = appendOption(b, ngEpbVerdict, verdict[:])
		b = appendOption(b, ngOptComment, []byte(p.Action.KernelName()))
	}
	b = appendOption(b, ngOptEnd, nil)
	return w.end(b)
}

// Flush implements PacketWriter.
func (w *PcapngWriter) Flush() error { return w.buf.Flush() }

// NewWriter returns a PcapngWriter for format "pcapng" and a PcapWriter for
// any other; see those for the arguments.
func NewWriter(w io.Writer, format string, lt layers.LinkType, snapLen int, hookNames []string) (PacketWriter, error) {
	if format == "pcapng" {
		return NewPcapngWriter(w, lt, snapLen, hookNames)
	}
	return NewPcapWriter(w, lt, snapLen)
}

// OutputFormat returns format, or if it is empty the format path's name
// asks for: pcapng for a name ending in .pcapng, else pcap.
func OutputFormat(path, format string) string {
	if format != "" {
		return format
	}
	if strings.HasSuffix(path, ".pcapng") {
		return "pcapng"
	}
	return "pcap"
}
