package bpfgen

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/cbpf"
)

type pkt struct {
	name  string
	frame []byte
	want  bool
}

func TestDNS(t *testing.T) {
	r := newRunner(t)
	gen := mustGen(t)
	o := Options{L3Offset: eth}
	long := func(c byte, n int) string { return strings.Repeat(string(c), n) }
	// A name of exactly 255 bytes in wire format: 3*64 + 62 + 1.
	name255 := strings.Join([]string{long('a', 63), long('b', 63), long('c', 63), long('d', 61)}, ".")
	name255x := strings.Join([]string{long('a', 63), long('b', 63), long('c', 63), long('d', 60) + "e"}, ".")
	// A first label of 33 bytes that would match "a.com" if its length
	// byte (0x21) were folded to 0x01 | 0x20.
	fold33 := dnsPayload(0x0100, [4]uint16{1}, "a\x03com\x00"+long('x', 27))
	compressed := dnsPayload(0x0100, [4]uint16{1})
	compressed = append(compressed[:12], 0xc0, 0x0c, 0, 1, 0, 1)
	wwwPointer := append(dnsPayload(0x0100, [4]uint16{1})[:12], 3, 'w', 'w', 'w', 0xc0, 0x0c, 0, 1, 0, 1)

	tests := []struct {
		patterns []string
		opts     Options
		dns      DNSOptions
		pkts     []pkt
	}{
		{[]string{"example.com"}, o, DNSOptions{}, []pkt{
			{"exact", udp4(query("example.com")), true},
			{"trailing dot in the query", udp4(query("example.com.")), true},
			{"other case", udp4(query("EXAMPLE.com")), false},
			{"subdomain", udp4(query("www.example.com")), false},
			{"shorter", udp4(query("example.co")), false},
			{"longer label", udp4(query("example.comm")), false},
			{"more labels", udp4(query("example.com.au")), false},
			{"compressed", udp4(compressed), false},
			{"truncated in the name", udp4(query("example.com"))[:eth+20+8+12+6], false},
			{"truncated in the header", udp4(query("example.com"))[:eth+20+4], false},
			{"IPv4 options", udp4With(t, 53, query("example.com"), func(h *layers.IPv4) {
				h.Options = []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}}
			}), true},
			{"later fragment", udp4With(t, 53, query("example.com"), func(h *layers.IPv4) { h.FragOffset = 100 }), false},
			{"first fragment", udp4With(t, 53, query("example.com"), func(h *layers.IPv4) { h.Flags = layers.IPv4MoreFragments }), true},
			{"port 5353", udp4With(t, 5353, query("example.com"), func(*layers.IPv4) {}), false},
			{"TCP", tcp4(t, 53, query("example.com")[12:]), false},
			{"IPv6", udp6(query("example.com")), false},
		}},
		{[]string{"example.com"}, o, DNSOptions{NoL4Check: true}, []pkt{
			{"exact", udp4(query("example.com")), true},
			{"port 5353", udp4With(t, 5353, query("example.com"), func(*layers.IPv4) {}), true},
			// The name where a UDP query has it: 20 bytes after the IP header.
			{"TCP", tcp4(t, 53, query("example.com")[12:]), true},
			{"IPv4 options", udp4With(t, 53, query("example.com"), func(h *layers.IPv4) {
				h.Options = []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}}
			}), true},
			{"other", udp4(query("example.org")), false},
		}},
		{[]string{"example.com"}, Options{L3Offset: eth, IPv6: true}, DNSOptions{}, []pkt{
			{"IPv6", udp6(query("example.com")), true},
			{"IPv6 other", udp6(query("example.net")), false},
			{"IPv4", udp4(query("example.com")), false},
			{"IPv6 port 54", func() []byte { f := udp6(query("example.com")); f[eth+40+3] = 54; return f }(), false},
		}},
		{[]string{"Example.COM"}, o, DNSOptions{CaseInsensitive: true}, []pkt{
			{"lower", udp4(query("example.com")), true},
			{"upper", udp4(query("EXAMPLE.COM")), true},
			{"mixed", udp4(query("eXaMpLe.CoM")), true},
			{"other letter", udp4(query("exbmple.com")), false},
		}},
		{[]string{"a-b.com"}, o, DNSOptions{CaseInsensitive: true}, []pkt{
			{"dash", udp4(query("A-B.com")), true},
			{"0x0d is not a folded dash", udp4(query("a\rb.com")), false},
		}},
		{[]string{"a.com"}, o, DNSOptions{CaseInsensitive: true}, []pkt{
			{"exact", udp4(query("a.com")), true},
			{"length bytes do not fold", udp4(fold33), false},
		}},
		{[]string{"*.example.com"}, o, DNSOptions{}, []pkt{
			{"one label", udp4(query("www.example.com")), true},
			{"one byte", udp4(query("a.example.com")), true},
			{"63 bytes", udp4(query(long('z', 63) + ".example.com")), true},
			{"no label", udp4(query("example.com")), false},
			{"two labels", udp4(query("a.b.example.com")), false},
			{"other suffix", udp4(query("www.example.org")), false},
			{"compressed", udp4(compressed), false},
		}},
		{[]string{"*{3-5}.example.com"}, o, DNSOptions{}, []pkt{
			{"3", udp4(query("abc.example.com")), true},
			{"5", udp4(query("abcde.example.com")), true},
			{"2", udp4(query("ab.example.com")), false},
			{"6", udp4(query("abcdef.example.com")), false},
		}},
		{[]string{"fin?.me"}, o, DNSOptions{}, []pkt{
			{"t", udp4(query("fint.me")), true},
			{"X", udp4(query("finX.me")), true},
			{"short", udp4(query("fin.me")), false},
			{"long", udp4(query("finxx.me")), false},
			{"prefix", udp4(query("www.fint.me")), false},
		}},
		{[]string{"example.**"}, o, DNSOptions{}, []pkt{
			{"com", udp4(query("example.com")), true},
			{"co.uk", udp4(query("example.co.uk")), true},
			{"alone", udp4(query("example")), true},
			{"subdomain", udp4(query("www.example.com")), false},
			{"longer label", udp4(query("eexample.com")), false},
		}},
		{[]string{"ex**"}, o, DNSOptions{}, []pkt{
			{"example.org", udp4(query("example.org")), true},
			{"ex.com", udp4(query("ex.com")), true},
			{"e.com", udp4(query("e.com")), false},
			{"xex.com", udp4(query("xex.com")), false},
			{"compressed", udp4(compressed), false},
		}},
		{[]string{"www.example.com"}, o, DNSOptions{}, []pkt{
			{"pointer after www", udp4(wwwPointer), false},
		}},
		{[]string{"foo.com", "bar.net", "*.baz.org", "x?.**"}, o, DNSOptions{}, []pkt{
			{"first", udp4(query("foo.com")), true},
			{"second", udp4(query("bar.net")), true},
			{"third", udp4(query("q.baz.org")), true},
			{"fourth", udp4(query("xy.anything.at.all")), true},
			{"none", udp4(query("foo.net")), false},
			{"none either", udp4(query("baz.org")), false},
		}},
		{[]string{"a%2eb.com", "%2a.org", "q%3f.net", "%41.info"}, o, DNSOptions{}, []pkt{
			{"dot in a label", udp4(dnsPayload(0x100, [4]uint16{1}, "a.b", "com")), true},
			{"two labels", udp4(query("a.b.com")), false},
			{"literal star", udp4(query("*.org")), true},
			{"not a wildcard", udp4(query("x.org")), false},
			{"literal question mark", udp4(query("q?.net")), true},
			{"not a wildcard either", udp4(query("qq.net")), false},
			{"escaped letter", udp4(query("A.info")), true},
			{"escaped letter is exact", udp4(query("a.info")), false},
		}},
		{[]string{name255}, o, DNSOptions{}, []pkt{
			{"255 bytes", udp4(query(name255)), true},
			{"last byte differs", udp4(query(name255x)), false},
		}},
		{[]string{strings.ToUpper(name255), "*." + name255[64:], "nothing.at.all"}, o, DNSOptions{CaseInsensitive: true}, []pkt{
			{"255 bytes, any case", udp4(query(name255)), true},
			{"255 bytes behind a star", udp4(query("zz." + name255[64:])), true},
			{"last byte differs", udp4(query(name255x)), false},
		}},
		{[]string{"example.com"}, Options{L3Offset: eth, Negate: true}, DNSOptions{NoL4Check: true}, []pkt{
			{"negated bare match", udp4(query("example.com")), false},
			{"negated bare other", udp4(query("example.org")), true},
		}},
		{[]string{"example.com"}, Options{L3Offset: eth, Negate: true}, DNSOptions{}, []pkt{
			{"negated match", udp4(query("example.com")), false},
			{"negated other", udp4(query("example.org")), true},
			{"negated: not DNS never matches", tcp4(t, 53, query("example.org")[12:]), false},
			{"negated: truncated never matches", udp4(query("example.org"))[:eth+20+8+12+3], false},
		}},
	}
	for _, tt := range tests {
		p := gen(DNS(tt.opts, tt.dns, tt.patterns...))
		for _, pk := range tt.pkts {
			r.check(fmt.Sprintf("dns %+v %+v %q: %s", tt.opts, tt.dns, tt.patterns, pk.name), p, pk.frame, pk.want)
		}
		// The same rule for packets that start at the IP header, as in
		// L4Drop and xt_bpf, in libpcap's interpreter.
		opts0 := tt.opts
		opts0.L3Offset = 0
		p0 := gen(DNS(opts0, tt.dns, tt.patterns...))
		for _, pk := range tt.pkts {
			if len(pk.frame) <= eth {
				continue
			}
			if got := interpret(p0, pk.frame[eth:]); got != pk.want {
				t.Errorf("dns %q at offset 0: %s: match %v, want %v", tt.patterns, pk.name, got, pk.want)
			}
		}
	}
	t.Logf("%d packets agree in x/net/bpf, libpcap and the kernel", r.runs)
}

func TestDNSErrors(t *testing.T) {
	tests := []struct {
		pattern string
		want    string
	}{
		{"", "empty pattern"},
		{"...", "empty pattern"},
		{"a..b", "empty label"},
		{strings.Repeat("x", 64) + ".com", "more than 63"},
		{"a%2", "not a %XX escape"},
		{"a%zz.com", `"%zz" is not a %XX escape`},
		{"*{5-3}.com", "want *{min-max}, 1 <= min <= max <= 63"},
		{"*{64-70}.com", "want *{min-max}, 1 <= min <= max <= 63"},
		{strings.Repeat("abcdefg.", 32) + "com", "more than 255"},
		{strings.Repeat(strings.Repeat("x", 63)+".", 4), "at least 257 bytes long in wire format, more than 255"},
		{strings.Repeat("x", 63) + "." + strings.Repeat("y", 63) + ".*{63-63}.*{63-63}", "at least 257 bytes"},
		{"*{8-9}**", "cannot start a ** prefix"},
		// Malformed wildcards, refused rather than taken as literal labels.
		{"*{x-y}.example.com", `label "*{x-y}": want *{min-max}`},
		{"*{5-2}", `label "*{5-2}": want *{min-max}`},
		{"*{3", `label "*{3": want *{min-max}`},
		{"*{-1-2}.com", `label "*{-1-2}": want *{min-max}`},
		{"*{}.com", "want *{min-max}"},
		{"*{0-3}.com", "want *{min-max}"},
		{"*{1-64}.com", "want *{min-max}"},
		{"*{001-3}.com", "want *{min-max}"},
		{"*{1-3}x.com", "want *{min-max}"},
		{"*{1-3}{4}.com", "want *{min-max}"},
		{"a*{1-2}.com", `'{' outside a *{min-max} label`},
		{"{1-3}.com", `'{' outside a *{min-max} label`},
		{"a}.com", `'}' outside a *{min-max} label`},
		{"**.com", "** only ends a pattern"},
		{"a.**.b", "** only ends a pattern"},
		{"a.b.**.**", "** only ends a pattern"},
		{"a**b.com", "** only ends a pattern"},
		{"a b.com", "byte 0x20: write it as %20"},
		{"a. .b", "byte 0x20"},
		{"a\tb.com", "byte 0x09"},
		{"bücher.de", "byte 0xc3: write it as %c3 (internationalized names: the xn-- form)"},
		{"*." + strings.Repeat("a", 1<<20), "(1048578 bytes)"},
	}
	for _, tt := range tests {
		_, err := DNS(Options{}, DNSOptions{}, "ok.com", tt.pattern)
		if err == nil {
			t.Errorf("DNS(%q): no error", tt.pattern)
			continue
		}
		// The pattern is named, quoted only so far.
		if !errors.Is(err, ErrPattern) || !strings.Contains(err.Error(), "dns pattern "+cbpf.QuoteExpr(tt.pattern)) || !strings.Contains(err.Error(), tt.want) || len(err.Error()) > 500 {
			t.Errorf("DNS(%.100q) = %.500v, want an ErrPattern naming the pattern and saying %q", tt.pattern, err, tt.want)
		}
	}
	if _, err := DNS(Options{}, DNSOptions{}); !errors.Is(err, ErrPattern) {
		t.Errorf("DNS without patterns: %v", err)
	}
}
