package filter

import (
	"errors"
	"fmt"
	"io"

	"github.com/gopacket/gopacket"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/xdpcap"
)

// Options say what Apply does with the packets of a
// capture file.
type Options struct {
	// Filter is the capture filter (nil: every packet matches).
	Filter []bpf.Instruction
	// SnapLen is the snap length (0: xdpcap.DefaultSnapLen).
	SnapLen int
	// Count stops after this many matching packets (0: never).
	Count int
	// Output, if not nil, gets the matching packets, and is flushed at
	// the end.
	Output xdpcap.PacketWriter
	// Name names the input in errors about its packets: "NAME: packet 3:
	// ...".
	Name string
	// FileSnapLen, if not 0, cuts packets captured longer than it to it
	// before the filter sees them, as libpcap (and so tcpdump -r) does
	// with records longer than their file's snap length.
	FileSnapLen int
}

// Result counts what Apply saw.
type Result struct {
	// Packets counts the packets read, Matched those the filter matched.
	Packets, Matched int
	// Interpreted counts the packets too short or too long for XDP, which
	// libpcap's interpreter filtered instead of the kernel.
	Interpreted int
}

// Apply runs the capture filter, as an xdpcap.TestFilter, over the
// packets src gives until its end, and writes those that match. Packets
// no XDP program could see (xdpcap.ErrPacketSize) are filtered by libpcap's
// interpreter, so that the output still answers the filter. Errors about
// a packet name it by number, from 1, after o.Name. A src that can
// (gopacket.ZeroCopyPacketDataSource) lends the packets rather than
// copying them.
func Apply(src gopacket.PacketDataSource, o Options) (Result, error) {
	var res Result
	snapLen := o.SnapLen
	if snapLen == 0 {
		snapLen = xdpcap.DefaultSnapLen
	}
	tf, err := xdpcap.NewTestFilter(o.Filter, snapLen)
	if err != nil {
		return res, err
	}
	defer tf.Close()
	var pcap *cbpf.Filter // libpcap's interpreter, made for the first packet it judges
	read := src.ReadPacketData
	if zc, ok := src.(gopacket.ZeroCopyPacketDataSource); ok {
		read = zc.ZeroCopyReadPacketData
	}
	for o.Count == 0 || res.Matched < o.Count {
		data, ci, err := read()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return res, fmt.Errorf("%s: packet %d: %w", o.Name, res.Packets+1, err)
		}
		res.Packets++
		if o.FileSnapLen > 0 && len(data) > o.FileSnapLen {
			data = data[:o.FileSnapLen]
		}
		ok, p, err := tf.Match(data)
		if errors.Is(err, xdpcap.ErrPacketSize) {
			res.Interpreted++
			if o.Filter != nil && pcap == nil {
				if pcap, err = cbpf.NewFilter(o.Filter); err != nil {
					return res, fmt.Errorf("%s: packet %d: %w", o.Name, res.Packets, err)
				}
			}
			ok = o.Filter == nil || pcap.Run(data, max(ci.Length, len(data))) != 0
			p = xdpcap.Packet{Action: xdpcap.Pass, Data: data[:min(len(data), snapLen)]}
			err = nil
		}
		if err != nil {
			return res, fmt.Errorf("%s: packet %d: %w", o.Name, res.Packets, err)
		}
		if !ok {
			continue
		}
		res.Matched++
		if o.Output == nil {
			continue
		}
		p.Time = ci.Timestamp
		p.Length = max(ci.Length, len(data))
		if err := o.Output.WritePacket(p); err != nil {
			return res, err
		}
	}
	if o.Output != nil {
		if err := o.Output.Flush(); err != nil {
			return res, err
		}
	}
	return res, nil
}
