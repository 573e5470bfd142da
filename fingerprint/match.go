// Package fingerprint finds what an attack's packets have in common and
// the legitimate traffic lacks, as auto rules (l4drop.AutoRule) that a
// running program evaluates from its MapAuto table, and runs that analysis
// continuously over a daemon's samples (Engine).
//
// Packets here are IP packets: bytes from the IP header on, as the auto
// table sees them.
package fingerprint

import (
	"encoding/binary"

	"github.com/l4drop/l4drop/l4drop"
)

// Match reports whether rule r matches p with the semantics of the
// program's auto table: family and protocol first, then every condition;
// a field beyond the captured bytes, or in a header the packet lacks, is
// no match. The family is p.Family, as the program takes it from the link
// layer, whatever the IP header's version field says; headers shorter
// than their fixed part are read as far as they go, as the program and
// libpcap read them. The rule's State is ignored.
func Match(r *l4drop.AutoRule, p Packet) bool {
	q, _ := newPkt(p.Data, p.Len, p.Family) // malformed or not, as the program reads it
	return q.matches(r)
}

// matches is Match for a parsed packet.
func (p *pkt) matches(r *l4drop.AutoRule) bool {
	if p.h.family != r.Family {
		return false
	}
	if r.Proto != 0 && (!p.h.hasProto || p.h.proto != r.Proto) {
		return false
	}
	for i := range r.Conds {
		if !condMatch(&r.Conds[i], r, &p.h, p.data, p.wire) {
			return false
		}
	}
	return true
}

// headers is where an IP packet's headers are; l4 and payload are -1 when
// the packet has none the auto table would load from.
type headers struct {
	family, proto byte
	hasProto      bool // the packet is long enough to hold its protocol
	l4, payload   int
}

// parse finds the headers as the auto table does, for a packet of family
// fam (0: the version field's): IPv4 transport header at IHL*4 unless the
// packet is a non-first fragment, IPv6 at 40 whatever the next header; the
// payload after an 8-byte UDP or a data-offset TCP header.
func parse(pkt []byte, fam byte) headers {
	h := headers{l4: -1, payload: -1}
	if fam == 0 && len(pkt) > 0 {
		fam = pkt[0] >> 4
	}
	switch fam {
	case 4:
		h.family = 4
		if len(pkt) > 9 {
			h.proto, h.hasProto = pkt[9], true
		}
		if len(pkt) >= 8 && binary.BigEndian.Uint16(pkt[6:])&0x1fff == 0 {
			h.l4 = int(pkt[0]&0xf) * 4
		}
	case 6:
		h.family, h.l4 = 6, 40
		if len(pkt) > 6 {
			h.proto, h.hasProto = pkt[6], true
		}
	default:
		return h
	}
	if h.l4 >= 0 && h.hasProto {
		switch h.proto {
		case 17:
			h.payload = h.l4 + 8
		case 6:
			if h.l4+13 <= len(pkt) {
				h.payload = h.l4 + int(pkt[h.l4+12]>>4)*4
			}
		}
	}
	return h
}

// wellFormed reports whether pkt, whose headers are h, has the fixed IP
// header of its family whole, with the version field saying the family:
// the packets fingerprints are learnt from.
func wellFormed(pkt []byte, h headers) bool {
	switch h.family {
	case 4:
		return len(pkt) >= 20 && pkt[0]>>4 == 4
	case 6:
		return len(pkt) >= 40 && pkt[0]>>4 == 6
	}
	return false
}

func condMatch(c *l4drop.AutoCond, r *l4drop.AutoRule, h *headers, pkt []byte, wireLen int) bool {
	var v uint32
	if c.Base == l4drop.BaseLen {
		// The length is compared whole: pcap-filter's len has no mask,
		// and Expr renders none.
		v = uint32(wireLen)
		return v >= c.Min && v <= c.Max
	}
	var base int
	switch c.Base {
	case l4drop.BaseIP:
		base = 0
	case l4drop.BaseL4:
		base = h.l4
	case l4drop.BasePayload:
		if r.Proto != 6 && r.Proto != 17 {
			return false
		}
		base = h.payload
	default:
		return false
	}
	if base < 0 {
		return false
	}
	off := base + int(c.Off)
	if off+int(c.Size) > len(pkt) {
		return false
	}
	switch c.Size {
	case 1:
		v = uint32(pkt[off])
	case 2:
		v = uint32(binary.BigEndian.Uint16(pkt[off:]))
	case 4:
		v = binary.BigEndian.Uint32(pkt[off:])
	default:
		return false
	}
	v &= c.Mask
	return v >= c.Min && v <= c.Max
}
