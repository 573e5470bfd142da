package bpfgen

import (
	"strings"
	"testing"

	"github.com/l4drop/l4drop/cbpf"
)

// FuzzGenerate runs the generators on arbitrary arguments: each refuses
// them with an error or returns a program that passes cbpf.Validate, as
// the kernel and the loaders require; none panics.
func FuzzGenerate(f *testing.F) {
	for _, seed := range []struct {
		gen, arg string
	}{
		{"dns", "*.example.com"},
		{"dns", "x?.**"},
		{"dns", "*{3-5}.zone.example"},
		{"dns", "%2a.org"},
		{"dns_validate", "--strict"},
		{"suffix", "de ad xx ef"},
		{"p0f", "*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0"},
		{"p0f", "4:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0"},
		{"p0f", "6:64:0:1360:mss*4,7:mss,sok,ts,nop,ws::0"},
	} {
		f.Add(seed.gen, seed.arg, false)
	}
	f.Fuzz(func(t *testing.T, gen, arg string, ipv6 bool) {
		switch gen {
		case "dns", "dns_validate", "suffix", "p0f":
		default:
			return // tcpdump is libpcap's, fuzzed there
		}
		p, err := Generate(Options{IPv6: ipv6, L3Offset: eth}, gen, []string{arg})
		if err != nil {
			return
		}
		if err := cbpf.Validate(p.Insns); err != nil {
			t.Fatalf("%s %q: %v", gen, arg, err)
		}
	})
}

// FuzzDNS checks dns rules against queries made from their patterns: a
// pattern of letters, digits, hyphens and whole-label stars matches the
// query for its name with every star made a label, and does not match it
// with a letter of it changed (for -i, changed to another letter).
func FuzzDNS(f *testing.F) {
	f.Add("example.com", false, false)
	f.Add("*.example.com", true, false)
	f.Add("www.*.example", false, true)
	f.Fuzz(func(t *testing.T, pattern string, ci, ipv6 bool) {
		p, err := DNS(Options{IPv6: ipv6, L3Offset: eth}, DNSOptions{CaseInsensitive: ci}, pattern)
		if err != nil {
			return
		}
		if err := cbpf.Validate(p.Insns); err != nil {
			t.Fatalf("%q: %v", pattern, err)
		}
		name, letter, ok := plainName(pattern)
		if !ok {
			return
		}
		frame := func(name string) []byte {
			if ipv6 {
				return udp6(query(name))
			}
			return udp4(query(name))
		}
		matches := func(name string) bool {
			pkt := frame(name)
			return cbpf.Interpret(p.Insns, pkt, len(pkt)) != 0
		}
		if !matches(name) {
			t.Fatalf("%q (-i %v) does not match a query for %q", pattern, ci, name)
		}
		if ci && !matches(strings.ToUpper(name)) {
			t.Fatalf("%q with -i does not match a query for %q", pattern, strings.ToUpper(name))
		}
		if letter < 0 {
			return
		}
		b := []byte(name)
		if b[letter]|0x20 == 'q' {
			b[letter] = 'z'
		} else {
			b[letter] = 'q'
		}
		if matches(string(b)) {
			t.Fatalf("%q (-i %v) matches a query for %q", pattern, ci, b)
		}
	})
}

// plainName returns the name a pattern of letters, digits, hyphens and
// whole-label stars stands for, with every star made the label "w", and
// the index of a letter of its own in that name (-1: none); ok is false
// for any other pattern.
func plainName(pattern string) (name string, letter int, ok bool) {
	labels := strings.Split(strings.Trim(pattern, "."), ".")
	letter = -1
	for i, l := range labels {
		if l == "*" {
			labels[i] = "w"
			continue
		}
		for _, c := range []byte(l) {
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
				if letter < 0 {
					letter = len(strings.Join(labels[:i], ".")) + min(i, 1) + strings.IndexByte(l, c)
				}
			case c >= '0' && c <= '9', c == '-':
			default:
				return "", 0, false
			}
		}
	}
	return strings.Join(labels, "."), letter, true
}
