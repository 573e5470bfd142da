package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// FieldKind says how a randomized field is filled.
type FieldKind int

const (
	// Letters fills the field with lower-case ASCII letters, as in a DNS label.
	Letters FieldKind = iota
	// Bytes fills the field with arbitrary bytes, as in a port or an address.
	Bytes
)

// Field is a range of a template's frame rewritten for every packet.
type Field struct {
	Off, Len int
	Kind     FieldKind
}

// Template is one kind of frame the generator sends. Fields are rewritten
// for every packet from a hash of the packet's sequence number and the seed,
// and the IPv4 and TCP/UDP checksums are recomputed, so the same seed sends
// the same packets.
type Template struct {
	// Spec is the text the template was parsed from, for reports.
	Spec string
	// Frame is an Ethernet frame.
	Frame  []byte
	Fields []Field
	// Weight is the template's share of the traffic, relative to the others.
	Weight int
}

// ErrSpec is wrapped by errors about template specifications.
var ErrSpec = errors.New("bad traffic template")

// TemplateHelp documents the specification ParseTemplate accepts.
const TemplateHelp = `KIND[,OPTION...] where KIND is
  dns    a DNS query: name=NAME (a '*' label is 12 random letters per packet), qtype=N (default 1, A)
  syn    a TCP SYN: port=N (default 80)
  udp    a UDP datagram: port=N (default 9), size=N payload bytes (default 18)
and OPTION is one of
  v6           IPv6 instead of IPv4
  vlan=ID[.ID] 802.1Q tag(s), outer first
  sport=N      fixed source port (default: random per packet)
  randsrc      random low 16 bits of the source address per packet
  weight=N     share of the traffic relative to the other templates (default 1)
e.g. 'dns,name=*.attack.example,weight=95'  'syn,port=443,v6'  'udp,port=53,vlan=100'`

// ParseTemplate parses a template specification (see TemplateHelp).
func ParseTemplate(spec string) (Template, error) {
	parts := strings.Split(spec, ",")
	t := Template{Spec: spec, Weight: 1}
	kind := parts[0]
	var (
		v6      bool
		vlans   []uint16
		sport   = -1
		port    = -1
		size    = 18
		name    = ""
		qtype   = 1
		randSrc bool
	)
	num := func(key, v string, max uint64) (int, error) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > max {
			return 0, fmt.Errorf("%w %q: %s=%q: want a number up to %d", ErrSpec, spec, key, v, max)
		}
		return int(n), nil
	}
	for _, p := range parts[1:] {
		key, v, _ := strings.Cut(p, "=")
		var err error
		switch key {
		case "v6":
			v6 = true
		case "randsrc":
			randSrc = true
		case "vlan":
			for _, id := range strings.Split(v, ".") {
				n, err := num("vlan", id, 4095)
				if err != nil {
					return t, err
				}
				vlans = append(vlans, uint16(n))
			}
			if len(vlans) > 2 {
				return t, fmt.Errorf("%w %q: at most two VLAN tags", ErrSpec, spec)
			}
		case "sport":
			sport, err = num(key, v, 65535)
		case "port":
			port, err = num(key, v, 65535)
		case "size":
			size, err = num(key, v, 1400)
		case "qtype":
			qtype, err = num(key, v, 65535)
		case "weight":
			t.Weight, err = num(key, v, 1<<20)
			if err == nil && t.Weight == 0 {
				err = fmt.Errorf("%w %q: weight must be at least 1", ErrSpec, spec)
			}
		case "name":
			name = v
		default:
			return t, fmt.Errorf("%w %q: unknown option %q", ErrSpec, spec, key)
		}
		if err != nil {
			return t, err
		}
	}
	b := frameBuilder{v6: v6, vlans: vlans}
	switch kind {
	case "dns":
		if name == "" {
			return t, fmt.Errorf("%w %q: dns needs name=NAME", ErrSpec, spec)
		}
		payload, letters, err := dnsQuery(name, uint16(qtype))
		if err != nil {
			return t, fmt.Errorf("%w %q: %v", ErrSpec, spec, err)
		}
		if port < 0 {
			port = 53
		}
		b.udp(uint16(port), payload)
		t.Fields = append(t.Fields, Field{Off: b.l4 + 8, Len: 2, Kind: Bytes}) // query ID
		for _, f := range letters {
			t.Fields = append(t.Fields, Field{Off: b.l4 + 8 + f.Off, Len: f.Len, Kind: Letters})
		}
	case "syn":
		if port < 0 {
			port = 80
		}
		b.syn(uint16(port))
		t.Fields = append(t.Fields, Field{Off: b.l4 + 4, Len: 4, Kind: Bytes}) // sequence number
	case "udp":
		if port < 0 {
			port = 9
		}
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte('a' + i%26)
		}
		b.udp(uint16(port), payload)
	default:
		return t, fmt.Errorf("%w %q: unknown kind %q (dns, syn, udp)", ErrSpec, spec, kind)
	}
	if sport >= 0 {
		binary.BigEndian.PutUint16(b.frame[b.l4:], uint16(sport))
	} else {
		t.Fields = append(t.Fields, Field{Off: b.l4, Len: 2, Kind: Bytes})
	}
	if randSrc {
		// The low 16 bits of the source address.
		off := b.l3 + 14
		if v6 {
			off = b.l3 + 22
		}
		t.Fields = append(t.Fields, Field{Off: off, Len: 2, Kind: Bytes})
	}
	t.Frame = b.frame
	setChecksums(t.Frame)
	return t, nil
}

// dnsQuery returns a DNS query payload for name and the ranges of its '*'
// labels, which become random letters.
func dnsQuery(name string, qtype uint16) ([]byte, []Field, error) {
	q := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	var random []Field
	name = strings.Trim(name, ".")
	if name != "" {
		for _, label := range strings.Split(name, ".") {
			if label == "*" {
				q = append(q, 12)
				random = append(random, Field{Off: len(q), Len: 12})
				q = append(q, "xxxxxxxxxxxx"...)
				continue
			}
			if label == "" || len(label) > 63 {
				return nil, nil, fmt.Errorf("name %q: label %q: want 1 to 63 bytes", name, label)
			}
			q = append(q, byte(len(label)))
			q = append(q, label...)
		}
	}
	if len(q)-12 > 254 {
		return nil, nil, fmt.Errorf("name %q longer than 255 bytes", name)
	}
	q = append(q, 0)
	q = binary.BigEndian.AppendUint16(q, qtype)
	return binary.BigEndian.AppendUint16(q, 1), random, nil
}

// frameBuilder builds frames from the internet side to the server.
type frameBuilder struct {
	v6     bool
	vlans  []uint16
	frame  []byte
	l3, l4 int
}

func (b *frameBuilder) ip(proto byte, l4 []byte) {
	f := append([]byte(nil), ServerMAC...)
	f = append(f, InetMAC...)
	for i, id := range b.vlans {
		tpid := uint16(0x8100)
		if i == 0 && len(b.vlans) > 1 {
			tpid = 0x88a8
		}
		f = binary.BigEndian.AppendUint16(f, tpid)
		f = binary.BigEndian.AppendUint16(f, id)
	}
	if b.v6 {
		f = binary.BigEndian.AppendUint16(f, 0x86dd)
		b.l3 = len(f)
		f = append(f, 0x60, 0, 0, 0)
		f = binary.BigEndian.AppendUint16(f, uint16(len(l4)))
		f = append(f, proto, 64)
		f = append(f, netip.MustParseAddr(InetIPv6).AsSlice()...)
		f = append(f, netip.MustParseAddr(ServerIPv6).AsSlice()...)
	} else {
		f = binary.BigEndian.AppendUint16(f, 0x0800)
		b.l3 = len(f)
		f = append(f, 0x45, 0)
		f = binary.BigEndian.AppendUint16(f, uint16(20+len(l4)))
		f = append(f, 0, 0, 0x40, 0, 64, proto, 0, 0) // id 0, DF, TTL 64
		f = append(f, netip.MustParseAddr(InetIPv4).AsSlice()...)
		f = append(f, netip.MustParseAddr(ServerIPv4).AsSlice()...)
	}
	b.l4 = len(f)
	b.frame = append(f, l4...)
}

func (b *frameBuilder) udp(dport uint16, payload []byte) {
	u := binary.BigEndian.AppendUint16(nil, 40000)
	u = binary.BigEndian.AppendUint16(u, dport)
	u = binary.BigEndian.AppendUint16(u, uint16(8+len(payload)))
	u = append(u, 0, 0)
	b.ip(17, append(u, payload...))
}

func (b *frameBuilder) syn(dport uint16) {
	t := binary.BigEndian.AppendUint16(nil, 40000)
	t = binary.BigEndian.AppendUint16(t, dport)
	t = append(t, 0, 0, 0, 1, 0, 0, 0, 0) // seq 1, ack 0
	t = append(t, 6<<4, 0x02)             // data offset 24 bytes, SYN
	t = binary.BigEndian.AppendUint16(t, 64240)
	t = append(t, 0, 0, 0, 0)       // checksum, urgent pointer
	t = append(t, 2, 4, 0x05, 0xb4) // MSS 1460
	b.ip(6, t)
}

// layout is where a frame's headers and checksums are.
type layout struct {
	l3, l4, end int  // IP header, TCP/UDP header, end of the IP packet
	v6          bool // else IPv4
	proto       byte
	ipCsum      int // offset of the IPv4 header checksum, or -1
	l4Csum      int // offset of the TCP/UDP checksum, or -1
	addrs       [2]int
}

// parseLayout finds the headers of an Ethernet frame with up to two VLAN tags.
func parseLayout(f []byte) (layout, bool) {
	lo := layout{ipCsum: -1, l4Csum: -1}
	off := 12
	for range 3 {
		if len(f) < off+2 {
			return lo, false
		}
		et := binary.BigEndian.Uint16(f[off:])
		off += 2
		switch et {
		case 0x8100, 0x88a8:
			off += 2
			continue
		case 0x0800:
			if len(f) < off+20 || f[off]>>4 != 4 {
				return lo, false
			}
			ihl := int(f[off]&0xf) * 4
			end := off + int(binary.BigEndian.Uint16(f[off+2:]))
			if ihl < 20 || end > len(f) || end < off+ihl {
				return lo, false
			}
			lo.l3, lo.l4, lo.end, lo.proto, lo.ipCsum = off, off+ihl, end, f[off+9], off+10
			lo.addrs = [2]int{off + 12, off + 20}
		case 0x86dd:
			if len(f) < off+40 || f[off]>>4 != 6 {
				return lo, false
			}
			end := off + 40 + int(binary.BigEndian.Uint16(f[off+4:]))
			if end > len(f) {
				return lo, false
			}
			lo.l3, lo.l4, lo.end, lo.proto, lo.v6 = off, off+40, end, f[off+6], true
			lo.addrs = [2]int{off + 8, off + 40}
		default:
			return lo, false
		}
		switch {
		case lo.proto == 17 && lo.end >= lo.l4+8:
			lo.l4Csum = lo.l4 + 6
		case lo.proto == 6 && lo.end >= lo.l4+20:
			lo.l4Csum = lo.l4 + 16
		}
		return lo, true
	}
	return lo, false
}

// sumLE adds b as little-endian 16-bit words, an odd last byte as the low
// byte of a word. The one's complement sum does not care about byte order
// as long as the result is stored in the same order: the program loads and
// stores words in the machine's (little-endian) order.
func sumLE(b []byte) uint64 {
	var s uint64
	for i := 0; i+1 < len(b); i += 2 {
		s += uint64(binary.LittleEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint64(b[len(b)-1])
	}
	return s
}

func fold(s uint64) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// pseudoConst is the part of the TCP/UDP pseudo-header that is not in the
// packet's address fields: protocol and length.
func (lo layout) pseudoConst() uint64 {
	n := lo.end - lo.l4
	return sumLE([]byte{0, lo.proto}) + sumLE([]byte{byte(n >> 8), byte(n)})
}

// setChecksums fills in correct IPv4 and TCP/UDP checksums.
func setChecksums(f []byte) {
	lo, ok := parseLayout(f)
	if !ok {
		return
	}
	if lo.ipCsum >= 0 {
		f[lo.ipCsum], f[lo.ipCsum+1] = 0, 0
		binary.LittleEndian.PutUint16(f[lo.ipCsum:], ^fold(sumLE(f[lo.l3:lo.l4])))
	}
	if lo.l4Csum >= 0 {
		f[lo.l4Csum], f[lo.l4Csum+1] = 0, 0
		s := lo.pseudoConst() + sumLE(f[lo.addrs[0]:lo.addrs[1]]) + sumLE(f[lo.l4:lo.end])
		c := ^fold(s)
		if c == 0 && lo.proto == 17 {
			c = 0xffff
		}
		binary.LittleEndian.PutUint16(f[lo.l4Csum:], c)
	}
}
