package fingerprint

import (
	"encoding/binary"

	"github.com/l4drop/l4drop/l4drop"
)

// field is a place in a packet a condition can test: Size bytes at Off
// from Base, masked. dst marks the destination port, which a rule never
// uses alone; destination addresses are never fields at all.
type field struct {
	name  string
	base  l4drop.AutoBase
	off   uint16
	size  uint8
	mask  uint32
	rng   bool // a range of values can be a condition, not only one value
	class bool // payload byte: also try the 0xe0 class (letters, digits)
	dst   bool
}

// payloadBytes is how many payload bytes are fields: a DNS header and the
// first labels of its name, an application's magic and command.
const payloadBytes = 48

// fields returns the fields of family fam and protocol proto, in order of
// preference when two tell the same.
func fields(fam, proto byte) []field {
	var fs []field
	if fam == 4 {
		fs = append(fs,
			field{name: "ttl", base: l4drop.BaseIP, off: 8, size: 1, mask: 0xff, rng: true},
			field{name: "ip id", base: l4drop.BaseIP, off: 4, size: 2, mask: 0xffff, rng: true},
			field{name: "df", base: l4drop.BaseIP, off: 6, size: 1, mask: 0x40},
			field{name: "fragment", base: l4drop.BaseIP, off: 6, size: 2, mask: 0x3fff},
			field{name: "ihl", base: l4drop.BaseIP, off: 0, size: 1, mask: 0x0f},
			field{name: "tos", base: l4drop.BaseIP, off: 1, size: 1, mask: 0xff},
			field{name: "source /16", base: l4drop.BaseIP, off: 12, size: 2, mask: 0xffff},
			field{name: "source", base: l4drop.BaseIP, off: 12, size: 4, mask: 0xffffffff},
		)
	} else {
		fs = append(fs,
			field{name: "hop limit", base: l4drop.BaseIP, off: 7, size: 1, mask: 0xff, rng: true},
			field{name: "traffic class", base: l4drop.BaseIP, off: 0, size: 2, mask: 0x0ff0},
			field{name: "flow label", base: l4drop.BaseIP, off: 0, size: 4, mask: 0xfffff, rng: true},
			field{name: "source /32", base: l4drop.BaseIP, off: 8, size: 4, mask: 0xffffffff},
		)
	}
	fs = append(fs, field{name: "length", base: l4drop.BaseLen, size: 4, mask: 0xffffffff, rng: true})
	switch proto {
	case 0:
		// A rule's protocol 0 is any protocol: protocol 0 itself (IPv6
		// hop-by-hop options, say) is a condition.
		off := uint16(9)
		if fam == 6 {
			off = 6
		}
		fs = append(fs, field{name: "protocol", base: l4drop.BaseIP, off: off, size: 1, mask: 0xff})
	case 17:
		fs = append(fs,
			field{name: "source port", base: l4drop.BaseL4, off: 0, size: 2, mask: 0xffff, rng: true},
			field{name: "destination port", base: l4drop.BaseL4, off: 2, size: 2, mask: 0xffff, dst: true},
		)
	case 6:
		fs = append(fs,
			field{name: "tcp flags", base: l4drop.BaseL4, off: 13, size: 1, mask: 0xff},
			field{name: "window", base: l4drop.BaseL4, off: 14, size: 2, mask: 0xffff, rng: true},
			field{name: "data offset", base: l4drop.BaseL4, off: 12, size: 1, mask: 0xf0, rng: true},
			field{name: "seq", base: l4drop.BaseL4, off: 4, size: 4, mask: 0xffffffff},
			field{name: "ack", base: l4drop.BaseL4, off: 8, size: 4, mask: 0xffffffff},
			field{name: "urgent", base: l4drop.BaseL4, off: 18, size: 2, mask: 0xffff},
			field{name: "source port", base: l4drop.BaseL4, off: 0, size: 2, mask: 0xffff, rng: true},
			field{name: "destination port", base: l4drop.BaseL4, off: 2, size: 2, mask: 0xffff, dst: true},
		)
		// The options layout: kinds, lengths and the values tools fix.
		for o := uint16(20); o < 40; o++ {
			fs = append(fs, field{name: "tcp option byte", base: l4drop.BaseL4, off: o, size: 1, mask: 0xff})
		}
	}
	if proto == 6 || proto == 17 {
		for o := uint16(0); o < payloadBytes; o++ {
			fs = append(fs, field{name: "payload byte", base: l4drop.BasePayload, off: o, size: 1, mask: 0xff, rng: true, class: true})
		}
	}
	return fs
}

// value loads f from p as the auto table would.
func (f *field) value(p *pkt) (uint32, bool) {
	if f.base == l4drop.BaseLen {
		return uint32(p.wire), true
	}
	var base int
	switch f.base {
	case l4drop.BaseIP:
		base = 0
	case l4drop.BaseL4:
		base = p.h.l4
	case l4drop.BasePayload:
		base = p.h.payload
	}
	if base < 0 {
		return 0, false
	}
	off := base + int(f.off)
	if off+int(f.size) > len(p.data) {
		return 0, false
	}
	var v uint32
	switch f.size {
	case 1:
		v = uint32(p.data[off])
	case 2:
		v = uint32(binary.BigEndian.Uint16(p.data[off:]))
	default:
		v = binary.BigEndian.Uint32(p.data[off:])
	}
	return v & f.mask, true
}

// pkt is a parsed packet.
type pkt struct {
	data []byte
	wire int
	h    headers
}

// newPkt parses data, an IP packet of family fam (0: the version
// field's), wire bytes long on the wire; false if it is not well-formed.
func newPkt(data []byte, wire int, fam byte) (pkt, bool) {
	if wire < len(data) {
		wire = len(data)
	}
	h := parse(data, fam)
	return pkt{data: data, wire: wire, h: h}, wellFormed(data, h)
}
