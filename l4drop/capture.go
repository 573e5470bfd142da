package l4drop

import (
	"errors"
	"fmt"
	"io"

	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/pcapfile"
)

// ReadFrames reads a pcap or pcapng file and returns its packets as
// Ethernet frames: raw IP captures get an Ethernet header in front, so
// that the rule set sees them as it would on an interface.
func ReadFrames(path string) ([][]byte, error) {
	r, f, err := pcapfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	lt := r.LinkType()
	var frames [][]byte
	for i := 1; ; i++ {
		d, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return frames, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: packet %d: %w", path, i, err)
		}
		frame, err := toEthernet(lt, d)
		if err != nil {
			return nil, fmt.Errorf("%s: packet %d: %w", path, i, err)
		}
		frames = append(frames, frame)
	}
}

func toEthernet(lt layers.LinkType, d []byte) ([]byte, error) {
	switch lt {
	case layers.LinkTypeEthernet:
		return append([]byte(nil), d...), nil
	case layers.LinkTypeRaw, 12, 14, layers.LinkTypeIPv4, layers.LinkTypeIPv6:
		hdr := make([]byte, 14, 14+len(d))
		hdr[0], hdr[6] = 0x02, 0x02
		if len(d) > 0 && d[0]>>4 == 6 {
			hdr[12], hdr[13] = 0x86, 0xdd
		} else {
			hdr[12], hdr[13] = 0x08, 0x00
		}
		return append(hdr, d...), nil
	}
	return nil, fmt.Errorf("link type %v: want Ethernet or raw IP", lt)
}
