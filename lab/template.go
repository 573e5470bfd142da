package lab

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/l4drop/l4drop/internal/splitmix"
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
  dns    a DNS query: name=NAME (a '*' label is 12 random letters per packet,
         '*N' N random letters), qtype=N (default 1, A), flags=N (default
         0x0100, RD), edns (an OPT record), response (an answer from port 53
         to a random port, as reflected at a victim; answers=N records)
  ntp    an NTP client request to port 123; response: a server's reply from
         port 123 to a random port; monlist: a mode 7 monlist reply, as reflected
  syn    a TCP SYN: port=N (default 80), window=N (default 64240),
         tcpopts=mss|none|linux|windows (default mss: MSS 1460 alone)
  udp    a UDP datagram: port=N (default 9), size=N payload bytes (default 18),
         payload=HEX the payload's first bytes, randpayload (the rest random)
and OPTION is one of
  v6           IPv6 instead of IPv4
  vlan=ID[.ID] 802.1Q tag(s), outer first
  sport=N      fixed source port (default: random per packet)
  randsrc      random low 16 bits of the source address per packet
  ttl=N        IPv4 TTL or IPv6 hop limit (default 64)
  ipid=N|rand  IPv4 identification (default 0)
  nodf         IPv4 without Don't Fragment
  len=N        IP packet length: the payload is padded with zeros to it
  weight=N     share of the traffic relative to the other templates (default 1)
e.g. 'dns,name=*.attack.example,weight=95'  'syn,port=443,v6,ttl=111,tcpopts=none'
     'udp,port=27015,payload=ffffffff54,len=60,ipid=rand'  'ntp,monlist,v6'`

// templateSpec is what the options of a template say.
type templateSpec struct {
	v6, randSrc, edns, response, monlist, randPayload, noDF bool
	vlans                                                   []uint16
	sport, port, size, qtype, flags, ttl, ipid, length      int
	window, answers                                         int
	randID                                                  bool
	name, tcpopts                                           string
	payload                                                 []byte
}

// ParseTemplate parses a template specification (see TemplateHelp).
func ParseTemplate(spec string) (Template, error) {
	parts := strings.Split(spec, ",")
	t := Template{Spec: spec, Weight: 1}
	kind := parts[0]
	o := templateSpec{sport: -1, port: -1, size: 18, qtype: 1, flags: 0x0100, ttl: 64, length: -1, window: 64240, answers: 1, tcpopts: "mss"}
	num := func(key, v string, max uint64) (int, error) {
		base := 10
		if strings.HasPrefix(v, "0x") {
			base, v = 16, v[2:]
		}
		n, err := strconv.ParseUint(v, base, 64)
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
			o.v6 = true
		case "randsrc":
			o.randSrc = true
		case "edns":
			o.edns = true
		case "response":
			o.response = true
		case "monlist":
			o.monlist, o.response = true, true
		case "randpayload":
			o.randPayload = true
		case "nodf":
			o.noDF = true
		case "vlan":
			for _, id := range strings.Split(v, ".") {
				n, err := num("vlan", id, 4095)
				if err != nil {
					return t, err
				}
				o.vlans = append(o.vlans, uint16(n))
			}
			if len(o.vlans) > 2 {
				return t, fmt.Errorf("%w %q: at most two VLAN tags", ErrSpec, spec)
			}
		case "sport":
			o.sport, err = num(key, v, 65535)
		case "port":
			o.port, err = num(key, v, 65535)
		case "size":
			o.size, err = num(key, v, 1400)
		case "qtype":
			o.qtype, err = num(key, v, 65535)
		case "flags":
			o.flags, err = num(key, v, 65535)
		case "answers":
			o.answers, err = num(key, v, 20)
		case "ttl":
			o.ttl, err = num(key, v, 255)
		case "ipid":
			if v == "rand" {
				o.randID = true
			} else {
				o.ipid, err = num(key, v, 65535)
			}
		case "len":
			o.length, err = num(key, v, 1500)
		case "window":
			o.window, err = num(key, v, 65535)
		case "tcpopts":
			o.tcpopts = v
			if _, ok := tcpOptions[v]; !ok {
				err = fmt.Errorf("%w %q: tcpopts=%q: want mss, none, linux or windows", ErrSpec, spec, v)
			}
		case "payload":
			o.payload, err = hex.DecodeString(v)
			if err != nil || len(o.payload) > 1400 {
				err = fmt.Errorf("%w %q: payload=%q: want up to 1400 bytes in hex", ErrSpec, spec, v)
			}
		case "weight":
			t.Weight, err = num(key, v, 1<<20)
			if err == nil && t.Weight == 0 {
				err = fmt.Errorf("%w %q: weight must be at least 1", ErrSpec, spec)
			}
		case "name", "qname":
			o.name = v
		default:
			return t, fmt.Errorf("%w %q: unknown option %q", ErrSpec, spec, key)
		}
		if err != nil {
			return t, err
		}
	}
	b := frameBuilder{v6: o.v6, vlans: o.vlans, ttl: byte(o.ttl), ipid: uint16(o.ipid), noDF: o.noDF}
	var payload []byte
	randDport := false
	var late []Field // random fields, as offsets in the payload
	switch kind {
	case "dns":
		if o.name == "" {
			return t, fmt.Errorf("%w %q: dns needs name=NAME", ErrSpec, spec)
		}
		var letters []Field
		var err error
		payload, letters, err = dnsMessage(o)
		if err != nil {
			return t, fmt.Errorf("%w %q: %w", ErrSpec, spec, err)
		}
		late = append(late, Field{Off: 0, Len: 2, Kind: Bytes}) // query ID
		late = append(late, letters...)
		if o.response {
			randDport = true
			if o.sport < 0 {
				o.sport = 53
			}
		} else if o.port < 0 {
			o.port = 53
		}
	case "ntp":
		payload = ntpMessage(o)
		if o.response {
			randDport = true
			if o.sport < 0 {
				o.sport = 123
			}
		} else if o.port < 0 {
			o.port = 123
		}
	case "syn":
		if o.port < 0 {
			o.port = 80
		}
	case "udp":
		if o.port < 0 {
			o.port = 9
		}
		payload = make([]byte, max(o.size, len(o.payload)))
		for i := range payload {
			payload[i] = byte('a' + i%26)
		}
		copy(payload, o.payload)
		if o.randPayload && len(payload) > len(o.payload) {
			late = append(late, Field{Off: len(o.payload), Len: len(payload) - len(o.payload), Kind: Bytes})
		}
	default:
		return t, fmt.Errorf("%w %q: unknown kind %q (dns, ntp, syn, udp)", ErrSpec, spec, kind)
	}
	if randDport && o.port >= 0 {
		randDport = false
	}
	if kind == "syn" {
		opts := tcpOptions[o.tcpopts]
		if o.length >= 0 {
			hdr := 40 + 20 + len(opts)
			if !o.v6 {
				hdr -= 20
			}
			if o.length < hdr {
				return t, fmt.Errorf("%w %q: len=%d shorter than the headers (%d)", ErrSpec, spec, o.length, hdr)
			}
			payload = make([]byte, o.length-hdr)
		}
		b.syn(uint16(max(o.port, 0)), uint16(o.window), opts, payload)
		t.Fields = append(t.Fields, Field{Off: b.l4 + 4, Len: 4, Kind: Bytes}) // sequence number
		if o.tcpopts == "linux" {
			t.Fields = append(t.Fields, Field{Off: b.l4 + 20 + 8, Len: 4, Kind: Bytes}) // timestamp
		}
	} else {
		if o.length >= 0 {
			hdr := 28
			if o.v6 {
				hdr = 48
			}
			if o.length < hdr+len(payload) {
				return t, fmt.Errorf("%w %q: len=%d shorter than the packet (%d)", ErrSpec, spec, o.length, hdr+len(payload))
			}
			payload = append(payload, make([]byte, o.length-hdr-len(payload))...)
		}
		b.udp(uint16(max(o.port, 0)), payload)
		for _, f := range late {
			f.Off += b.l4 + 8
			t.Fields = append(t.Fields, f)
		}
	}
	if o.sport >= 0 {
		binary.BigEndian.PutUint16(b.frame[b.l4:], uint16(o.sport))
	} else {
		t.Fields = append(t.Fields, Field{Off: b.l4, Len: 2, Kind: Bytes})
	}
	if o.randSrc {
		// The low 16 bits of the source address.
		off := b.l3 + 14
		if o.v6 {
			off = b.l3 + 22
		}
		t.Fields = append(t.Fields, Field{Off: off, Len: 2, Kind: Bytes})
	}
	if randDport {
		t.Fields = append(t.Fields, Field{Off: b.l4 + 2, Len: 2, Kind: Bytes})
	}
	if o.randID && !o.v6 {
		t.Fields = append(t.Fields, Field{Off: b.l3 + 4, Len: 2, Kind: Bytes})
	}
	t.Frame = b.frame
	setChecksums(t.Frame)
	return t, nil
}

// tcpOptions are SYN option layouts: what Linux and Windows send, MSS
// alone (the default), none (as many flood tools).
var tcpOptions = map[string][]byte{
	"mss":  {2, 4, 0x05, 0xb4},
	"none": nil,
	// MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
	"linux": {2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7},
	// MSS 1460, NOP, window scale 8, NOP, NOP, SACK permitted.
	"windows": {2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2},
}

// dnsMessage returns a DNS query or response payload for o's name and the
// ranges of its '*' labels, which become random letters.
func dnsMessage(o templateSpec) ([]byte, []Field, error) {
	flags := uint16(o.flags)
	if o.response {
		flags |= 0x8080 // QR, RA
	}
	q := binary.BigEndian.AppendUint16([]byte{0x12, 0x34}, flags)
	q = append(q, 0, 1)
	ans := 0
	if o.response {
		ans = o.answers
	}
	q = binary.BigEndian.AppendUint16(q, uint16(ans))
	ar := 0
	if o.edns {
		ar = 1
	}
	q = append(q, 0, 0)
	q = binary.BigEndian.AppendUint16(q, uint16(ar))
	var random []Field
	name := strings.Trim(o.name, ".")
	if name != "" {
		for _, label := range strings.Split(name, ".") {
			if n, ok := strings.CutPrefix(label, "*"); ok {
				size := 12
				if n != "" {
					v, err := strconv.Atoi(n)
					if err != nil || v < 1 || v > 63 {
						return nil, nil, fmt.Errorf("name %q: label %q: want * or *N, N from 1 to 63", name, label)
					}
					size = v
				}
				q = append(q, byte(size))
				random = append(random, Field{Off: len(q), Len: size, Kind: Letters})
				q = append(q, strings.Repeat("x", size)...)
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
	q = binary.BigEndian.AppendUint16(q, uint16(o.qtype))
	q = binary.BigEndian.AppendUint16(q, 1)
	for i := 0; i < ans; i++ {
		// A pointer to the question's name, an A record.
		q = append(q, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2, byte(1+i))
	}
	if o.edns {
		// Root name, OPT, 4096-byte UDP payload, DO.
		q = append(q, 0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0)
	}
	return q, random, nil
}

// ntpMessage returns an NTP client request, a server's reply, or a mode 7
// monlist reply of six entries.
func ntpMessage(o templateSpec) []byte {
	if o.monlist {
		m := []byte{0xd7, 0x00, 0x03, 0x2a, 0x00, 0x06, 0x00, 0x48}
		for i := 0; i < 6; i++ {
			e := make([]byte, 72)
			e[3], e[7] = byte(10+i), byte(i)
			copy(e[16:], []byte{198, 51, 100, byte(1 + i)})
			m = append(m, e...)
		}
		return m
	}
	m := make([]byte, 48)
	m[0] = 0x23 // version 4, client
	if o.response {
		m[0], m[1], m[2], m[3] = 0x24, 2, 3, 0xe9 // server, stratum 2
		copy(m[12:], "GPS\x00")
	}
	return m
}

// frameBuilder builds frames from the internet side to the server.
type frameBuilder struct {
	v6     bool
	vlans  []uint16
	ttl    byte
	ipid   uint16
	noDF   bool
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
		f = append(f, proto, b.ttl)
		f = append(f, netip.MustParseAddr(InetIPv6).AsSlice()...)
		f = append(f, netip.MustParseAddr(ServerIPv6).AsSlice()...)
	} else {
		f = binary.BigEndian.AppendUint16(f, 0x0800)
		b.l3 = len(f)
		f = append(f, 0x45, 0)
		f = binary.BigEndian.AppendUint16(f, uint16(20+len(l4)))
		f = binary.BigEndian.AppendUint16(f, b.ipid)
		df := byte(0x40)
		if b.noDF {
			df = 0
		}
		f = append(f, df, 0, b.ttl, proto, 0, 0)
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

func (b *frameBuilder) syn(dport, window uint16, opts, payload []byte) {
	t := binary.BigEndian.AppendUint16(nil, 40000)
	t = binary.BigEndian.AppendUint16(t, dport)
	t = append(t, 0, 0, 0, 1, 0, 0, 0, 0) // seq 1, ack 0
	t = append(t, byte((20+len(opts))/4)<<4, 0x02)
	t = binary.BigEndian.AppendUint16(t, window)
	t = append(t, 0, 0, 0, 0) // checksum, urgent pointer
	t = append(t, opts...)
	b.ip(6, append(t, payload...))
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

// Frames returns n frames of ts, by weight, as a Generator seeded with seed
// sends them: template i's k-th frame is the one the generator sends as
// that template's k-th. Tests and analyses use them without a kernel.
func Frames(ts []Template, seed uint64, n int) [][]byte {
	if len(ts) == 0 || n <= 0 {
		return nil
	}
	counts := shares(uint64(n), ts)
	seq := make([]uint64, len(ts))
	seeds := make([]uint64, len(ts))
	for i := range ts {
		seeds[i] = splitmix.Mix(seed + uint64(i)*0x9e3779b97f4a7c15)
	}
	// Smooth weighted round robin: the templates interleave as finely as
	// their weights allow.
	credit := make([]int64, len(ts))
	var wsum int64
	for _, t := range ts {
		wsum += int64(t.Weight)
	}
	out := make([][]byte, 0, n)
	for len(out) < n {
		best := -1
		for i, t := range ts {
			if seq[i] >= counts[i] {
				continue
			}
			credit[i] += int64(t.Weight)
			if best < 0 || credit[i] > credit[best] {
				best = i
			}
		}
		credit[best] -= wsum
		out = append(out, ts[best].frame(seeds[best], seq[best]))
		seq[best]++
	}
	return out
}

// frame is the template's frame with the random fields of sequence number
// seq, as the generator's program writes them.
func (t *Template) frame(seed, seq uint64) []byte {
	f := append([]byte(nil), t.Frame...)
	h := (seed + seq) * 0x9e3779b97f4a7c15
	h ^= h >> 31
	for _, fl := range t.Fields {
		if fl.Off < 0 || fl.Off+fl.Len > len(f) {
			continue
		}
		for b := fl.Off; b < fl.Off+fl.Len; b++ {
			h = h*lcgMul + lcgAdd
			v := h >> 33
			if fl.Kind == Letters {
				v = v%26 + 'a'
			}
			f[b] = byte(v)
		}
	}
	setChecksums(f)
	return f
}

// IPPacket returns the IP packet an Ethernet frame carries (after up to
// two VLAN tags), or nil.
func IPPacket(frame []byte) []byte {
	lo, ok := parseLayout(frame)
	if !ok {
		return nil
	}
	return frame[lo.l3:lo.end]
}
