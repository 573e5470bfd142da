// Package pcapfile reads capture files, pcap or pcapng, telling them apart by
// their first bytes.
//
// Classic pcap is read here rather than through pcapgo because pcapgo
// refuses records whose captured length exceeds the length on the wire,
// which libpcap and tcpdump accept and real captures contain; pcapng goes to
// pcapgo's reader.
package pcapfile

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// ErrFormat is returned when the input is neither pcap nor pcapng.
var ErrFormat = errors.New("not a pcap or pcapng file")

// MaxRecord bounds one record's captured length, so that a corrupt length
// field cannot make the reader allocate gigabytes.
const MaxRecord = 1 << 24

const ngMagic = 0x0A0D0D0A

// Reader reads the packets of a capture file.
type Reader struct {
	lt   layers.LinkType
	ng   *pcapgo.NgReader
	r    *bufio.Reader
	ord  binary.ByteOrder
	nano bool
	snap int    // the file header's snap length
	n    int    // records read, for errors
	big  []byte // ZeroCopyReadPacketData's records too long for r's buffer
}

// bufferSize is the reader's buffer: records up to its size are read
// without a copy of their own (ZeroCopyReadPacketData), and a file in
// reads of this size.
const bufferSize = 1 << 18

// NewReader reads the file header from r and returns a Reader for the
// packets that follow.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, bufferSize)
	head, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	if binary.LittleEndian.Uint32(head) == ngMagic {
		ng, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("pcapng: %w", err)
		}
		return &Reader{lt: ng.LinkType(), ng: ng}, nil
	}
	var fh [24]byte
	if _, err := io.ReadFull(br, fh[:]); err != nil {
		return nil, fmt.Errorf("%w: file header: %w", ErrFormat, err)
	}
	rd := &Reader{r: br}
	switch magic := binary.LittleEndian.Uint32(fh[:]); magic {
	case 0xa1b2c3d4, 0xa1b23c4d:
		rd.ord, rd.nano = binary.LittleEndian, magic == 0xa1b23c4d
	case 0xd4c3b2a1, 0x4d3cb2a1:
		rd.ord, rd.nano = binary.BigEndian, magic == 0x4d3cb2a1
	default:
		return nil, fmt.Errorf("%w: magic %#08x", ErrFormat, magic)
	}
	// The upper bits of the link type field carry FCS information.
	rd.lt = layers.LinkType(rd.ord.Uint32(fh[20:]) & 0x0fffffff)
	rd.snap = int(rd.ord.Uint32(fh[16:]))
	return rd, nil
}

// Open opens the capture file at path. Closing the returned closer closes
// the file.
func Open(path string) (*Reader, io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	r, err := NewReader(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, f, nil
}

// maxSnapLen is libpcap's largest snap length for most link types: a
// header's snap length of 0 or above it counts as this.
const maxSnapLen = 262144

// SnapLen returns the file's snap length as libpcap takes it (pcapng:
// its first interface's), or 0 if it sets no limit below maxSnapLen.
// libpcap, and so tcpdump -r, cuts records captured longer than it to
// it; this reader does not.
func (r *Reader) SnapLen() int {
	snap := r.snap
	if r.ng != nil {
		if i, err := r.ng.Interface(0); err == nil {
			snap = int(i.SnapLength)
		}
	}
	if snap <= 0 || snap >= maxSnapLen {
		return 0
	}
	return snap
}

// LinkType returns the link type of the packets (of the first interface, for
// pcapng).
func (r *Reader) LinkType() layers.LinkType { return r.lt }

// ReadPacketData returns the next packet. At the end of the file it returns
// io.EOF; a file cut short inside a record gives io.ErrUnexpectedEOF.
func (r *Reader) ReadPacketData() ([]byte, gopacket.CaptureInfo, error) {
	if r.ng != nil {
		return r.ng.ReadPacketData()
	}
	data, ci, err := r.read()
	if err != nil {
		return nil, ci, err
	}
	return bytes.Clone(data), ci, nil
}

// ZeroCopyReadPacketData is ReadPacketData without a copy of the packet:
// its data is valid until the next call only.
func (r *Reader) ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error) {
	if r.ng != nil {
		return r.ng.ZeroCopyReadPacketData()
	}
	return r.read()
}

// read reads a pcap record, whose data lies in r's buffer (or r.big) until
// the next read.
func (r *Reader) read() ([]byte, gopacket.CaptureInfo, error) {
	var ci gopacket.CaptureInfo
	hdr, err := r.r.Peek(16)
	if err != nil {
		if len(hdr) > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, ci, err
	}
	r.n++
	sec, frac := r.ord.Uint32(hdr[0:]), r.ord.Uint32(hdr[4:])
	caplen, length := r.ord.Uint32(hdr[8:]), r.ord.Uint32(hdr[12:])
	if caplen > MaxRecord {
		return nil, ci, fmt.Errorf("pcap record %d: captured length %d is implausible", r.n, caplen)
	}
	r.r.Discard(16)
	var data []byte
	if int(caplen) <= r.r.Size() {
		data, err = r.r.Peek(int(caplen))
		r.r.Discard(len(data))
	} else {
		if cap(r.big) < int(caplen) {
			r.big = make([]byte, caplen)
		}
		data = r.big[:caplen]
		_, err = io.ReadFull(r.r, data)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, ci, err
	}
	if !r.nano {
		frac *= 1000
	}
	ci.Timestamp = time.Unix(int64(sec), int64(frac))
	ci.CaptureLength, ci.Length = int(caplen), int(length)
	return data, ci, nil
}
