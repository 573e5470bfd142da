package bpfgen

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
)

// DNSOptions are the dns generator's own flags.
type DNSOptions struct {
	// CaseInsensitive (-i) compares ASCII letters ignoring case; length
	// bytes and other characters still compare exactly.
	CaseInsensitive bool
	// NoL4Check (--no-l4-check) leaves out the checks of IP version,
	// protocol (UDP), first fragment, IPv4 header length and destination
	// port 53, as the original did (iptables checked them with
	// "-p udp --dport 53"). In XDP nothing else checks them.
	NoL4Check bool
}

// Sizes of the headers in front of the question name.
const (
	ipv6HeaderLen = 40
	udpHeaderLen  = 8
	dnsHeaderLen  = 12
	maxLabel      = 63
	maxName       = 255
)

// DNS returns a rule matching DNS queries whose first question name matches
// one of the patterns. Names are compared as the labels of the wire format.
// In a pattern:
//
//   - leading and trailing dots are ignored;
//   - "*" as a whole label matches exactly one label of any length;
//   - "*{min-max}" as a whole label matches one label of min to max bytes
//     (1 <= min <= max <= 63);
//   - "?" matches any one byte of a label;
//   - a trailing "**" label ("example.**") matches anything after the
//     labels before it, nothing included; "**" at the end of a label
//     ("ex**") matches the labels that start with it;
//   - "%XX" is the byte with hex value XX, so "%2e", "%2a" and "%3f" are a
//     literal dot, star and question mark inside a label; "*" elsewhere in
//     a label is literal.
//
// Patterns that look like mistakes are refused, naming the pattern and the
// label: a malformed "*{...}", braces elsewhere, "**" before the end, empty
// labels, blanks, control and non-ASCII bytes (write them as %XX;
// internationalized names in their xn-- form), labels over 63 bytes and
// names over 255 bytes in wire format.
//
// A compressed name (a pointer in the question) never matches.
func DNS(opts Options, dns DNSOptions, patterns ...string) (*Program, error) {
	if len(patterns) == 0 {
		return nil, fmt.Errorf("%w: dns: no pattern given", ErrPattern)
	}
	parsed := make([][]segment, len(patterns))
	for i, p := range patterns {
		segs, err := parseDNSPattern(p, dns.CaseInsensitive)
		if err != nil {
			return nil, fmt.Errorf("%w: dns pattern %s: %w", ErrPattern, cbpf.QuoteExpr(p), err)
		}
		parsed[i] = segs
	}
	match, noMatch := opts.results()
	a := &asm{}
	a.comment("dns %s%s%q, IPv%d, IP header at %d", flagText(dns.CaseInsensitive, "-i "), flagText(dns.NoL4Check, "--no-l4-check "), patterns, ipVersion(opts), opts.L3Offset)
	a.comment("match: ret #%d, no match: ret #%d", match, noMatch)
	if !dns.NoL4Check {
		udpPortCheck(a, opts, 53, "notdns")
	}
	base := nameStart(a, opts, dns.NoL4Check)
	for i, segs := range parsed {
		fail := "nomatch"
		if i+1 < len(parsed) {
			fail = fmt.Sprintf("pattern%d", i+1)
		}
		if i > 0 {
			a.label(fmt.Sprintf("pattern%d", i))
			if hasStar(parsed[i-1]) {
				// The pattern before moved X past a label.
				resetX(a, opts)
			}
		}
		matchName(a, segs, base, fail)
		a.ret(match, "matches", strconv.Quote(patterns[i]))
	}
	a.label("nomatch")
	endNotDNS(a, noMatch, !dns.NoL4Check)
	return a.resolve()
}

// DNSRule returns the bytecode of a dns rule with the IP header at offset
// 0 and the layer-4 checks, for callers that only need instructions (it has
// the signature of l4drop.DNSGenerator).
func DNSRule(patterns []string, ipv6, caseInsensitive bool) ([]bpf.Instruction, error) {
	p, err := DNS(Options{IPv6: ipv6}, DNSOptions{CaseInsensitive: caseInsensitive}, patterns...)
	if err != nil {
		return nil, err
	}
	return p.Insns, nil
}

func flagText(on bool, text string) string {
	if on {
		return text
	}
	return ""
}

func ipVersion(opts Options) int {
	if opts.IPv6 {
		return 6
	}
	return 4
}

// udpPortCheck checks IP version, protocol UDP, for IPv4 a header length
// of at least 20 and a first fragment, and the UDP destination port; a
// packet failing any goes to fail. For IPv4 it leaves X = IP header length,
// for IPv6 X = 0.
func udpPortCheck(a *asm, opts Options, port uint32, fail string) {
	l3 := opts.L3Offset
	a.emit(bpf.LoadAbsolute{Off: l3, Size: 1}, "IP version")
	if opts.IPv6 {
		a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0})
		a.jne(0x60, fail, "IPv6?")
		a.emit(bpf.LoadAbsolute{Off: l3 + 6, Size: 1}, "next header")
		a.jne(17, fail, "UDP?")
		a.emit(bpf.LoadAbsolute{Off: l3 + ipv6HeaderLen + 2, Size: 2}, "UDP destination port")
		a.jne(port, fail)
		return
	}
	// Version 4 and a header length of 5 to 15 words: 0x45 to 0x4f.
	a.jlt(0x45, fail, "IPv4 with a header of 20 bytes or more?")
	a.jgt(0x4f, fail)
	a.emit(bpf.LoadAbsolute{Off: l3 + 9, Size: 1}, "protocol")
	a.jne(17, fail, "UDP?")
	a.emit(bpf.LoadAbsolute{Off: l3 + 6, Size: 2}, "fragment offset")
	a.jset(0x1fff, fail, "not the first fragment: no UDP header")
	a.emit(bpf.LoadMemShift{Off: l3}, "X = IPv4 header length")
	a.emit(bpf.LoadIndirect{Off: l3 + 2, Size: 2}, "UDP destination port")
	a.jne(port, fail)
}

// nameStart makes sure X is the IP header length (0 for IPv6) and returns
// the offset of the first question name from X.
func nameStart(a *asm, opts Options, needX bool) uint32 {
	off := opts.L3Offset + udpHeaderLen + dnsHeaderLen
	if opts.IPv6 {
		return off + ipv6HeaderLen // X is still 0
	}
	if needX {
		a.emit(bpf.LoadMemShift{Off: opts.L3Offset}, "X = IPv4 header length")
	}
	return off
}

// endNotDNS ends the rule for packets that do not match (nomatch, which the
// caller has put as the label of the next instruction) and for packets that
// are not DNS queries (notdns): those never match, even negated, as when
// iptables checks "-p udp --dport 53" in front of the rule.
func endNotDNS(a *asm, noMatch uint32, checked bool) {
	if noMatch == NoMatch || !checked {
		if checked {
			a.label("notdns")
		}
		a.ret(noMatch)
		return
	}
	a.ret(noMatch)
	a.label("notdns")
	a.ret(NoMatch, "not a DNS query: never a match")
}

// resetX sets X back to what nameStart left there.
func resetX(a *asm, opts Options) {
	if opts.IPv6 {
		a.emit(bpf.LoadConstant{Dst: bpf.RegX, Val: 0})
		return
	}
	a.emit(bpf.LoadMemShift{Off: opts.L3Offset}, "X = IPv4 header length")
}

func hasStar(segs []segment) bool {
	for _, s := range segs {
		if s.kind == segStar {
			return true
		}
	}
	return false
}

// segment is a piece of a name pattern.
type segment struct {
	kind  segKind
	bytes []pbyte // segBytes, segPrefix: bytes to compare
	min   int     // segStar, segPrefix: label length range
	max   int
	text  string
}

type segKind int

const (
	segBytes  segKind = iota // fixed bytes, length bytes included
	segStar                  // one label, length in [min, max]
	segPrefix                // one label of length in [min, max] starting with bytes
	segAny                   // anything
)

// pbyte is one byte of a pattern: the packet's byte b matches when
// (b|fold)&care == val.
type pbyte struct{ val, care, fold byte }

var starRange = regexp.MustCompile(`^\*\{([0-9]{1,2})-([0-9]{1,2})\}$`)

// starLengths reads a wildcard label, "*" or "*{min-max}", and returns the
// label lengths it matches.
func starLengths(label string) (lo, hi int, err error) {
	if label == "*" {
		return 1, maxLabel, nil
	}
	m := starRange.FindStringSubmatch(label)
	if m != nil {
		lo, _ = strconv.Atoi(m[1]) // two digits at most: no error
		hi, _ = strconv.Atoi(m[2])
	}
	if m == nil || lo < 1 || lo > hi || hi > maxLabel {
		return 0, 0, fmt.Errorf("label %s: want *{min-max}, 1 <= min <= max <= %d", cbpf.QuoteExpr(label), maxLabel)
	}
	return lo, hi, nil
}

// checkLabelText refuses what in a label other than a wildcard is a
// mistake rather than a byte to match: "**" before the end of the pattern,
// braces (a mistyped *{min-max}), blanks, control and non-ASCII bytes.
// Such bytes can still be matched, written as %XX.
func checkLabelText(label string) error {
	if strings.Contains(label, "**") {
		return fmt.Errorf("label %s: ** only ends a pattern (example.** or ex**)", cbpf.QuoteExpr(label))
	}
	for i := 0; i < len(label); i++ {
		switch c := label[i]; {
		case c == '{' || c == '}':
			return fmt.Errorf("label %s: %q outside a *{min-max} label (a literal brace is %%%02x)", cbpf.QuoteExpr(label), c, c)
		case c <= ' ' || c >= 0x7f:
			return fmt.Errorf("label %s: byte %#02x: write it as %%%02x (internationalized names: the xn-- form)", cbpf.QuoteExpr(label), c, c)
		}
	}
	return nil
}

func parseDNSPattern(p string, ci bool) ([]segment, error) {
	s := strings.Trim(strings.TrimSpace(p), ".")
	if s == "" {
		return nil, fmt.Errorf("empty pattern")
	}
	if s == "**" {
		return []segment{{kind: segAny, text: "**"}}, nil
	}
	tail := segKind(-1)
	switch {
	case strings.HasSuffix(s, ".**"):
		tail = segAny
		s = strings.TrimRight(s[:len(s)-3], ".")
	case strings.HasSuffix(s, "**"):
		tail = segPrefix
		s = s[:len(s)-2]
	}
	labels := strings.Split(s, ".")
	var segs []segment
	var run []pbyte
	flush := func() {
		if len(run) > 0 {
			segs = append(segs, segment{kind: segBytes, bytes: run})
			run = nil
		}
	}
	wire, prefixMin := 0, 0
	for i, label := range labels {
		last := i == len(labels)-1
		if label == "" {
			return nil, fmt.Errorf("empty label (two dots in a row)")
		}
		if label == "*" || strings.HasPrefix(label, "*{") {
			if last && tail == segPrefix {
				return nil, fmt.Errorf("label %s: a wildcard cannot start a ** prefix", cbpf.QuoteExpr(label+"**"))
			}
			lo, hi, err := starLengths(label)
			if err != nil {
				return nil, err
			}
			flush()
			segs = append(segs, segment{kind: segStar, min: lo, max: hi, text: label})
			wire += 1 + lo
			continue
		}
		if err := checkLabelText(label); err != nil {
			return nil, err
		}
		chars, err := decodeLabel(label, ci)
		if err != nil {
			return nil, err
		}
		if len(chars) > maxLabel {
			return nil, fmt.Errorf("label %s is %d bytes long, more than %d", cbpf.QuoteExpr(label), len(chars), maxLabel)
		}
		if last && tail == segPrefix {
			flush()
			segs = append(segs, segment{kind: segPrefix, bytes: chars, min: max(len(chars), 1), max: maxLabel, text: label + "**"})
			prefixMin = 1 + max(len(chars), 1)
			continue
		}
		run = append(run, pbyte{val: byte(len(chars)), care: 0xff})
		run = append(run, chars...)
		wire += 1 + len(chars)
	}
	if tail == -1 {
		run = append(run, pbyte{val: 0, care: 0xff}) // the root label
		wire++
	}
	flush()
	if tail == segAny {
		segs = append(segs, segment{kind: segAny, text: "**"})
	}
	if wire+prefixMin > maxName {
		return nil, fmt.Errorf("the name is at least %d bytes long in wire format, more than %d", wire+prefixMin, maxName)
	}
	return segs, nil
}

// decodeLabel reads a label's characters: "?" is any byte, "%XX" a byte in
// hex.
func decodeLabel(label string, ci bool) ([]pbyte, error) {
	var out []pbyte
	for i := 0; i < len(label); i++ {
		c := label[i]
		switch c {
		case '?':
			out = append(out, pbyte{})
			continue
		case '%':
			if i+2 >= len(label) {
				return nil, fmt.Errorf("label %s: %s is not a %%XX escape", cbpf.QuoteExpr(label), cbpf.QuoteExpr(label[i:]))
			}
			v, err := strconv.ParseUint(label[i+1:i+3], 16, 8)
			if err != nil {
				return nil, fmt.Errorf("label %s: %q is not a %%XX escape", cbpf.QuoteExpr(label), label[i:i+3])
			}
			c = byte(v)
			i += 2
		}
		b := pbyte{val: c, care: 0xff}
		if ci && isLetter(c) {
			b = pbyte{val: c | 0x20, care: 0xff, fold: 0x20}
		}
		out = append(out, b)
	}
	return out, nil
}

func isLetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }

// matchName compares the name at X+base with a pattern, going to fail on
// a difference.
func matchName(a *asm, segs []segment, base uint32, fail string) {
	off := base // from X
	for _, s := range segs {
		switch s.kind {
		case segBytes:
			compareBytes(a, off, s.bytes, fail)
			off += uint32(len(s.bytes))
		case segStar, segPrefix:
			a.emit(bpf.LoadIndirect{Off: off, Size: 1}, "label length, for", s.text)
			if s.min > 1 || s.kind == segStar {
				// A length of 0 ends the name; so a star needs one of at least 1.
				a.jlt(uint32(s.min), fail)
			}
			a.jgt(uint32(s.max), fail, "longer labels do not exist: a compression pointer")
			if s.kind == segPrefix {
				compareBytes(a, off+1, s.bytes, fail)
				return
			}
			a.emit(bpf.ALUOpX{Op: bpf.ALUOpAdd})
			a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: off + 1})
			a.emit(bpf.TAX{}, "X = after the label")
			off = 0
		case segAny:
			return
		}
	}
}

// compareBytes compares the packet at X+off with bs, four, two or one bytes
// at a time.
func compareBytes(a *asm, off uint32, bs []pbyte, fail string) {
	for len(bs) > 0 {
		n := 4
		for n > len(bs) {
			n /= 2
		}
		chunk := bs[:n]
		bs = bs[n:]
		var val, care, fold uint32
		for _, b := range chunk {
			val, care, fold = val<<8|uint32(b.val), care<<8|uint32(b.care), fold<<8|uint32(b.fold)
		}
		if care == 0 {
			off += uint32(n)
			continue // all wildcards
		}
		a.emit(bpf.LoadIndirect{Off: off, Size: n}, fmt.Sprintf("%q", printable(chunk)))
		if fold != 0 {
			a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpOr, Val: fold}, "fold case")
		}
		if full := uint32(1)<<(8*n) - 1; care != full {
			a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: care}, "? wildcards")
		}
		a.jne(val&care, fail)
		off += uint32(n)
	}
}

func printable(bs []pbyte) string {
	out := make([]byte, len(bs))
	for i, b := range bs {
		switch {
		case b.care == 0:
			out[i] = '?'
		default:
			out[i] = b.val
		}
	}
	return string(out)
}
