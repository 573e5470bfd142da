package bpfgen

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/fixture"
)

func TestDNSValidate(t *testing.T) {
	r := newRunner(t)
	gen := mustGen(t)
	q := func(flags uint16, qd, an, ns, ar uint16) []byte {
		return dnsPayload(flags, [4]uint16{qd, an, ns, ar}, "example", "com")
	}
	good := q(0x0100, 1, 0, 0, 0)
	short := dnsPayload(0x0100, [4]uint16{1}, "a") // 12 + 3 + 4 = 19 bytes
	tests := []struct {
		name   string
		frame  []byte
		loose  bool // malformed without --strict
		strict bool // malformed with --strict
	}{
		{"ordinary query (RD)", udp4(good), false, true},
		{"no flags", udp4(q(0, 1, 0, 0, 0)), false, false},
		{"CD, AD", udp4(q(0x0030, 1, 0, 0, 0)), false, false},
		{"RA", udp4(q(0x0080, 1, 0, 0, 0)), false, true},
		{"TC", udp4(q(0x0200, 1, 0, 0, 0)), true, true},
		{"AA", udp4(q(0x0400, 1, 0, 0, 0)), true, true},
		{"response", udp4(q(0x8180, 1, 0, 0, 0)), true, true},
		{"opcode", udp4(q(0x0800, 1, 0, 0, 0)), true, true},
		{"rcode", udp4(q(0x0003, 1, 0, 0, 0)), true, true},
		{"QDCOUNT 0", udp4(q(0, 0, 0, 0, 0)), true, true},
		{"QDCOUNT 2", udp4(q(0, 2, 0, 0, 0)), true, true},
		{"ANCOUNT 1", udp4(q(0, 1, 1, 0, 0)), true, true},
		{"NSCOUNT 1", udp4(q(0, 1, 0, 1, 0)), true, true},
		{"ARCOUNT 1 (EDNS)", udp4(q(0, 1, 0, 0, 1)), false, false},
		{"ARCOUNT 2", udp4(q(0, 1, 0, 0, 2)), true, true},
		{"too short", udp4(short), true, true},
		{"malformed to port 80", udp4With(t, 80, q(0x8000, 5, 5, 5, 5), func(*layers.IPv4) {}), false, false},
		{"malformed over TCP", tcp4(t, 53, q(0x8000, 5, 5, 5, 5)), false, false},
		{"IPv6 query", udp6(good), false, false},
		{"truncated header", udp4(good)[:eth+20+8+2], false, false},
	}
	for _, strict := range []bool{false, true} {
		p := gen(DNSValidate(Options{L3Offset: eth}, DNSValidateOptions{Strict: strict}))
		for _, tt := range tests {
			want := tt.loose
			if strict {
				want = tt.strict
			}
			r.check(fmt.Sprintf("dns_validate strict=%v: %s", strict, tt.name), p, tt.frame, want)
		}
	}
	p6 := gen(DNSValidate(Options{L3Offset: eth, IPv6: true}, DNSValidateOptions{}))
	r.check("IPv6 good", p6, udp6(good), false)
	r.check("IPv6 TC", p6, udp6(q(0x0200, 1, 0, 0, 0)), true)
	r.check("IPv6 short", p6, udp6(short), true)
	r.check("IPv4 on the IPv6 rule", p6, udp4(q(0x0200, 1, 0, 0, 0)), false)
	bare := gen(DNSValidate(Options{L3Offset: eth}, DNSValidateOptions{NoL4Check: true}))
	r.check("no l4 check: port 80", bare, udp4With(t, 80, q(0x8000, 5, 5, 5, 5), func(*layers.IPv4) {}), true)
	r.check("no l4 check: good", bare, udp4(good), false)
	neg := gen(DNSValidate(Options{L3Offset: eth, Negate: true}, DNSValidateOptions{}))
	r.check("negated: good", neg, udp4(good), true)
	r.check("negated: TC", neg, udp4(q(0x0200, 1, 0, 0, 0)), false)
	r.check("negated: not DNS never matches", neg, tcp4(t, 53, good), false)
}

func TestSuffix(t *testing.T) {
	r := newRunner(t)
	gen := mustGen(t)
	// Long enough that Ethernet padding does not follow the payload.
	frame := udp4([]byte(strings.Repeat("-", 20) + "hello\xde\xad\xbe\xef"))
	tests := []struct {
		hex   []string
		frame []byte
		want  bool
	}{
		{[]string{"deadbeef"}, frame, true},
		{[]string{"de ad", "be EF"}, frame, true},
		{[]string{"ef"}, frame, true},
		{[]string{"deadbeee"}, frame, false},
		{[]string{"dexxbexx"}, frame, true},
		{[]string{"xxxxxxef"}, frame, true},
		{[]string{"ddxxbeef"}, frame, false},
		{[]string{"68656c6c6fdeadbeef"}, frame, true},       // 9 bytes: 4, 4, 1
		{[]string{"0068656c6c6fdeadbeef"}, frame, false},    // the byte before differs
		{[]string{strings.Repeat("00", 200)}, frame, false}, // longer than the packet
	}
	for _, tt := range tests {
		p := gen(Suffix(Options{}, tt.hex...))
		r.check(fmt.Sprintf("suffix %q", tt.hex), p, tt.frame, tt.want)
		// Neither the offset nor the IP version changes a suffix rule.
		if p6 := gen(Suffix(Options{IPv6: true, L3Offset: 14}, tt.hex...)); interpret(p6, tt.frame) != tt.want {
			t.Errorf("suffix %q with -6 -o 14: match %v", tt.hex, !tt.want)
		}
	}
	neg := gen(Suffix(Options{Negate: true}, "deadbeef"))
	r.check("negated", neg, frame, false)
	for _, bad := range [][]string{{}, {"abc"}, {"zz"}, {"0x12"}, {"x1"}} {
		_, err := Suffix(Options{}, bad...)
		if !errors.Is(err, ErrPattern) {
			t.Errorf("Suffix(%q) = %v, want an ErrPattern", bad, err)
		}
	}
}

func TestTcpdump(t *testing.T) {
	r := newRunner(t)
	gen := mustGen(t)
	dns := udp4(query("example.com"))
	syn := fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 80)
	p := gen(Tcpdump(Options{L3Offset: eth}, "udp dst port 53"))
	r.check("udp 53: dns", p, dns, true)
	r.check("udp 53: syn", p, syn, false)
	neg := gen(Tcpdump(Options{L3Offset: eth, Negate: true}, "udp dst port 53"))
	r.check("negated: dns", neg, dns, false)
	r.check("negated: syn", neg, syn, true)
	vlan := gen(Tcpdump(Options{L3Offset: 18}, "tcp dst port 80"))
	r.check("vlan: tagged syn", vlan, fixture.VLAN(syn, 7), true)
	r.check("vlan: untagged syn", vlan, syn, false)
	raw := gen(Tcpdump(Options{}, "udp dst port 53"))
	if !interpret(raw, dns[eth:]) || interpret(raw, syn[eth:]) {
		t.Error("tcpdump at offset 0 does not see packets from the IP header")
	}
	raw6 := gen(Tcpdump(Options{IPv6: true}, "udp dst port 53"))
	if !interpret(raw6, udp6(query("x"))[eth:]) {
		t.Error("tcpdump -6 at offset 0 does not match IPv6")
	}
	for _, bad := range []struct {
		opts Options
		expr string
		want string
	}{
		{Options{}, "udp port x53", `compile "udp port x53": unknown port 'x53'`},
		{Options{}, "  ", "empty expression"},
		{Options{L3Offset: 3}, "udp", "offset 3"},
	} {
		_, err := Tcpdump(bad.opts, bad.expr)
		if !errors.Is(err, ErrPattern) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Tcpdump(%+v, %q) = %v, want an ErrPattern with %q", bad.opts, bad.expr, err, bad.want)
		}
	}
}

// synOpts builds a TCP SYN over IPv4 or IPv6 with the given details.
type synSpec struct {
	v6      bool
	ttl     uint8
	df      bool
	id      uint16
	window  uint16
	opts    []layers.TCPOption
	payload []byte
	ece     bool
	ack     uint32
}

func mss(v uint16) layers.TCPOption {
	return layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{byte(v >> 8), byte(v)}}
}

func ws(v byte) layers.TCPOption {
	return layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{v}}
}

var (
	nop = layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1}
	sok = layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}
	eol = layers.TCPOption{OptionType: layers.TCPOptionKindEndList, OptionLength: 1}
)

func ts(own, peer uint32) layers.TCPOption {
	d := []byte{byte(own >> 24), byte(own >> 16), byte(own >> 8), byte(own), byte(peer >> 24), byte(peer >> 16), byte(peer >> 8), byte(peer)}
	return layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: d}
}

func (s synSpec) frame(t *testing.T) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Seq: 12345, Window: s.window, Options: s.opts, ECE: s.ece, Ack: s.ack}
	if s.v6 {
		ip6 := &layers.IPv6{Version: 6, HopLimit: s.ttl, NextHeader: layers.IPProtocolTCP, SrcIP: ip(fixture.ClientIPv6), DstIP: ip(fixture.ServerIPv6)}
		tcp.SetNetworkLayerForChecksum(ip6)
		return serialize(t, ether(layers.EthernetTypeIPv6), ip6, tcp, gopacket.Payload(s.payload))
	}
	ip4 := &layers.IPv4{Version: 4, TTL: s.ttl, Id: s.id, Protocol: layers.IPProtocolTCP, SrcIP: ip(fixture.ClientIPv4), DstIP: ip(fixture.ServerIPv4)}
	if s.df {
		ip4.Flags = layers.IPv4DontFragment
	}
	tcp.SetNetworkLayerForChecksum(ip4)
	return serialize(t, ether(layers.EthernetTypeIPv4), ip4, tcp, gopacket.Payload(s.payload))
}

func TestP0f(t *testing.T) {
	r := newRunner(t)
	gen := mustGen(t)
	linux := synSpec{ttl: 64, df: true, id: 4321, window: 1460 * 20,
		opts: []layers.TCPOption{mss(1460), sok, ts(1000, 0), nop, ws(10)}}
	with := func(s synSpec, change func(*synSpec)) synSpec {
		s.opts = append([]layers.TCPOption(nil), s.opts...)
		change(&s)
		return s
	}
	windows := synSpec{ttl: 128, df: true, id: 99, window: 8192,
		opts: []layers.TCPOption{mss(1460), nop, ws(8), nop, nop, sok}}
	mac := synSpec{ttl: 64, df: true, id: 7, window: 65535,
		opts: []layers.TCPOption{mss(1460), nop, ws(4), nop, nop, ts(77, 0), sok, eol}}
	tests := []struct {
		sig   string
		opts  Options
		cases []struct {
			name string
			syn  synSpec
			want bool
		}
	}{
		{"*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0", Options{L3Offset: eth}, []struct {
			name string
			syn  synSpec
			want bool
		}{
			{"Linux 3.11+", linux, true},
			{"over IPv6", with(linux, func(s *synSpec) { s.v6 = true }), true},
			{"a hop away", with(linux, func(s *synSpec) { s.ttl = 50 }), true},
			{"TTL 128", with(linux, func(s *synSpec) { s.ttl = 128 }), false},
			{"TTL 20", with(linux, func(s *synSpec) { s.ttl = 20 }), false},
			{"other MSS, same multiple", with(linux, func(s *synSpec) { s.opts[0] = mss(1400); s.window = 1400 * 20 }), true},
			{"window 64240", with(linux, func(s *synSpec) { s.window = 64240 }), false},
			{"scale 7", with(linux, func(s *synSpec) { s.opts[4] = ws(7) }), false},
			{"no DF", with(linux, func(s *synSpec) { s.df = false }), false},
			{"zero IP ID", with(linux, func(s *synSpec) { s.id = 0 }), false},
			{"options reordered", with(linux, func(s *synSpec) { s.opts[1], s.opts[2] = s.opts[2], s.opts[1] }), false},
			{"payload", with(linux, func(s *synSpec) { s.payload = []byte("data") }), false},
			{"Windows", windows, false},
		}},
		{"*:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0", Options{L3Offset: eth}, []struct {
			name string
			syn  synSpec
			want bool
		}{
			{"Windows 7/8", windows, true},
			{"TTL 64", with(windows, func(s *synSpec) { s.ttl = 64 }), false},
			{"window 8760", with(windows, func(s *synSpec) { s.window = 8760 }), false},
			{"Linux", linux, false},
		}},
		{"4:64:0:*:65535,4:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0", Options{L3Offset: eth}, []struct {
			name string
			syn  synSpec
			want bool
		}{
			{"Mac OS X", mac, true},
			{"over IPv6", with(mac, func(s *synSpec) { s.v6 = true }), false},
			{"nop instead of eol", with(mac, func(s *synSpec) { s.opts[len(s.opts)-1] = nop }), false},
		}},
		{"6:64:0:*:mss*4,*:mss,sok,ts,nop,ws:flow:*", Options{L3Offset: eth, IPv6: true}, []struct {
			name string
			syn  synSpec
			want bool
		}{
			{"IPv4 never", with(linux, func(s *synSpec) { s.window = 5840 }), false},
		}},
		{"*:64-:0:1460:%1460,*:mss,sok,ts,nop,ws:df:+", Options{L3Offset: eth}, []struct {
			name string
			syn  synSpec
			want bool
		}{
			{"payload and TTL 200", with(linux, func(s *synSpec) { s.payload = []byte("x"); s.ttl = 200 }), true},
			{"no payload", linux, false},
			{"window not a multiple", with(linux, func(s *synSpec) { s.payload = []byte("x"); s.window = 1461 }), false},
		}},
		{"*:64:0:*:*,*:mss,sok,ts,nop,ws:df,ecn:0", Options{L3Offset: eth}, []struct {
			name string
			syn  synSpec
			want bool
		}{
			{"ECE flag", with(linux, func(s *synSpec) { s.ece = true }), true},
			{"no ECN", linux, false},
		}},
		{"*:64:0:*:*,*:mss,sok,ts,nop,ws:df,ack+:0", Options{L3Offset: eth}, []struct {
			name string
			syn  synSpec
			want bool
		}{
			{"ack number without ACK", with(linux, func(s *synSpec) { s.ack = 5 }), true},
			{"no ack number", linux, false},
		}},
	}
	for _, tt := range tests {
		p := gen(P0f(tt.opts, tt.sig))
		for _, c := range tt.cases {
			r.check(fmt.Sprintf("p0f %s: %s", tt.sig, c.name), p, c.syn.frame(t), c.want)
		}
	}
	// Negated, and at offset 0.
	neg := gen(P0f(Options{L3Offset: eth, Negate: true}, tests[0].sig))
	r.check("negated Linux", neg, linux.frame(t), false)
	p0 := gen(P0f(Options{}, tests[0].sig))
	if !interpret(p0, linux.frame(t)[eth:]) || interpret(p0, windows.frame(t)[eth:]) {
		t.Error("p0f at offset 0 does not see packets from the IP header")
	}
	for _, bad := range []string{
		"", "4:64:0:*:mss*20,10:mss:df", "5:64:0:*:*,*:mss::0", "4:300:0:*:*,*:mss::0",
		"4:64:0:*:mss*20:mss::0", "4:64:0:*:*,*:mss,sack::0", "4:64:0:*:*,*:mss:weird:0",
		"4:64:0:*:*,*:mss::x", "4:64:3:*:*,*:mss::0", "4:64:0:*:mss*4,*:nop::0", "4:64:0:*:*,*:mss:exws:0",
		"*:64:0:1460:%8,*:mss,nop,nop,sok:ecn,ts2+:+", "4:64:0:*:%0,*:mss::0", "4:64:0:*:*,*:mss,eol+1,nop::0",
	} {
		_, err := P0f(Options{}, bad)
		if !errors.Is(err, ErrPattern) || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("P0f(%q) = %v, want an ErrPattern naming the signature", bad, err)
		}
	}
	// The signature's version and -6 must agree: Options.IPv6 places the
	// TCP header, so neither may be silently dropped.
	for _, tt := range []struct {
		opts Options
		sig  string
		want string
	}{
		{Options{IPv6: true}, "4:64:0:*:*,*:mss::0", "is for IPv4, but -6 asks for IPv6"},
		{Options{}, "6:64:0:*:*,*:mss::0", "is for IPv6: give -6"},
		{Options{L3Offset: eth}, "6:64:0:*:mss*4,*:mss,sok,ts,nop,ws:flow:*", "is for IPv6: give -6"},
	} {
		_, err := P0f(tt.opts, tt.sig)
		if !errors.Is(err, ErrPattern) || !strings.Contains(err.Error(), fmt.Sprintf("%q %s", tt.sig, tt.want)) {
			t.Errorf("P0f(%+v, %q) = %v, want an ErrPattern with %q", tt.opts, tt.sig, err, tt.want)
		}
	}
}
