package bpfgen

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/l4drop/l4drop/cbpf"
)

// P0f returns a rule matching TCP packets with the SYN flag (a SYN or a
// SYN+ACK) that fit a p0f v3 signature
//
//	ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass
//
// (the fields of p0f.fp, e.g. Linux 3.11 and newer is
// "*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0"):
//
//   - ver: 4, 6 or * (both; only 6 with [Options.IPv6]);
//   - ittl: initial TTL N (the TTL must be at most N and, above 32, more
//     than N-35), "N-" (not checked) or "N+D" (as N);
//   - olen: length of IPv4 options, 0 for IPv6;
//   - mss: the MSS option's value, or *;
//   - wsize: the window, as a constant, "mss*N", "mtu*N" (MTU from the MSS
//     plus 40 bytes of IPv4 or 60 of IPv6 headers, 1500 without MSS
//     option), "%N" (a multiple of N) or *;
//   - scale: the window scale option's value, or *;
//   - olayout: the TCP options in order: eol+N (end of options and N bytes
//     of padding), nop, mss, ws, sok, ts; the data offset must fit the
//     layout unless the "bad" quirk is given;
//   - quirks: df (don't fragment), id+ (DF and a non-zero IP ID), id- (no
//     DF and a zero IP ID), ecn, 0+ (the reserved IPv4 flag; without it
//     that bit must be clear), flow (IPv6 flow label), seq- (zero sequence
//     number), ack+ (acknowledgment number without ACK flag), ack- (ACK
//     flag with zero acknowledgment number), uptr+ (urgent pointer without
//     URG), urgf+ (URG flag), pushf+ (PSH flag), ts1- (zero own timestamp),
//     ts2+ (non-zero peer timestamp), opt+ (non-zero padding after eol),
//     exws (window scale above 14), bad (options malformed: the data
//     offset is not checked);
//   - pclass: 0 (no payload), + (payload) or *.
//
// The signature becomes a pcap-filter expression compiled by libpcap for
// the link type [TcpdumpLinkType] gives. For IPv6 the TCP header follows a
// fixed 40-byte header, as in the original.
func P0f(opts Options, signature string) (*Program, error) {
	sig, err := parseP0f(signature)
	if err != nil {
		return nil, fmt.Errorf("%w: p0f signature %s: %w", ErrPattern, cbpf.QuoteExpr(signature), err)
	}
	var versions []int
	switch {
	case sig.ver == "4" && opts.IPv6:
		return nil, fmt.Errorf("%w: p0f signature %s is for IPv4, but -6 asks for IPv6", ErrPattern, cbpf.QuoteExpr(signature))
	case sig.ver == "6" && !opts.IPv6:
		// Options.IPv6 also says where the TCP header is: without it the
		// rule would be written for IPv4 packets.
		return nil, fmt.Errorf("%w: p0f signature %s is for IPv6: give -6", ErrPattern, cbpf.QuoteExpr(signature))
	case sig.ver == "4":
		versions = []int{4}
	case opts.IPv6:
		versions = []int{6}
	default:
		versions = []int{4, 6}
	}
	var alts []string
	header := []string{"p0f " + signature}
	for _, v := range versions {
		steps, err := sig.steps(v)
		if err != nil {
			return nil, fmt.Errorf("%w: p0f signature %s: %w", ErrPattern, cbpf.QuoteExpr(signature), err)
		}
		var exprs []string
		for _, s := range steps {
			exprs = append(exprs, s.expr)
			header = append(header, fmt.Sprintf("IPv%d %-40s %s", v, s.doc+":", s.expr))
		}
		alts = append(alts, "("+strings.Join(exprs, " and ")+")")
	}
	return compileExpr(opts, strings.Join(alts, " or "), header)
}

type p0fSig struct {
	ver          string
	ittl         int
	ttlUnchecked bool
	olen         int // -1: any
	mss          int // -1: any
	wsizeKind    string
	wsize        int // -1: any
	scale        int // -1: any
	layout       []tcpOpt
	optLen       int // bytes of options, padding included
	eolPad       int // padding bytes after eol, -1: no eol
	eolPadAt     int // offset of the padding from the TCP header
	quirks       map[string]bool
	pclass       string
}

type tcpOpt struct {
	name string
	kind int
	at   int // offset from the TCP header
}

var (
	p0fTTL   = regexp.MustCompile(`^([0-9]+)(-|\+[0-9]+|\+\?)?$`)
	p0fWsize = regexp.MustCompile(`^(mss\*|mtu\*|%)?([0-9]+)$`)
	p0fEOL   = regexp.MustCompile(`^eol\+([0-9]+)$`)
)

var p0fQuirks = map[string]bool{
	"df": true, "id+": true, "id-": true, "ecn": true, "0+": true, "flow": true,
	"seq-": true, "ack+": true, "ack-": true, "uptr+": true, "urgf+": true,
	"pushf+": true, "ts1-": true, "ts2+": true, "opt+": true, "exws": true, "bad": true,
}

func parseP0f(s string) (*p0fSig, error) {
	f := strings.Split(strings.TrimSpace(s), ":")
	if len(f) != 8 {
		return nil, fmt.Errorf("want 8 fields ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass, got %d", len(f))
	}
	sig := &p0fSig{ver: f[0], quirks: map[string]bool{}, eolPad: -1}
	if sig.ver != "4" && sig.ver != "6" && sig.ver != "*" {
		return nil, fmt.Errorf("ver %s: want 4, 6 or *", cbpf.QuoteExpr(f[0]))
	}
	m := p0fTTL.FindStringSubmatch(f[1])
	if m == nil {
		return nil, fmt.Errorf("ittl %s: want N, N- or N+D", cbpf.QuoteExpr(f[1]))
	}
	ittl, err := strconv.Atoi(m[1])
	if err != nil || ittl < 1 || ittl > 255 {
		return nil, fmt.Errorf("ittl %s: want 1 to 255", cbpf.QuoteExpr(f[1]))
	}
	sig.ittl, sig.ttlUnchecked = ittl, m[2] == "-"
	if sig.olen, err = starOrNumber(f[2], 40); err != nil {
		return nil, fmt.Errorf("olen: %w", err)
	}
	if sig.olen > 0 && sig.olen%4 != 0 {
		return nil, fmt.Errorf("olen %d: IPv4 options come in 4-byte words", sig.olen)
	}
	if sig.mss, err = starOrNumber(f[3], 65535); err != nil {
		return nil, fmt.Errorf("mss: %w", err)
	}
	wsize, scale, ok := strings.Cut(f[4], ",")
	if !ok {
		return nil, fmt.Errorf("wsize,scale %s: want two fields", cbpf.QuoteExpr(f[4]))
	}
	sig.wsize = -1
	if wsize != "*" {
		m := p0fWsize.FindStringSubmatch(wsize)
		if m == nil {
			return nil, fmt.Errorf("wsize %s: want N, mss*N, mtu*N, %%N or *", cbpf.QuoteExpr(wsize))
		}
		sig.wsizeKind = m[1]
		if sig.wsize, err = strconv.Atoi(m[2]); err != nil || sig.wsize > 65535 {
			return nil, fmt.Errorf("wsize %s: number out of range", cbpf.QuoteExpr(wsize))
		}
		if sig.wsizeKind == "%" && sig.wsize == 0 {
			return nil, fmt.Errorf("wsize %s: multiple of 0", cbpf.QuoteExpr(wsize))
		}
	}
	if sig.scale, err = starOrNumber(scale, 255); err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	at := 20
	if f[5] != "" {
		for _, name := range strings.Split(f[5], ",") {
			if sig.eolPad >= 0 {
				return nil, fmt.Errorf("olayout %s: nothing may follow eol", cbpf.QuoteExpr(f[5]))
			}
			o := tcpOpt{name: name, at: at}
			switch name {
			case "nop":
				o.kind, at = 1, at+1
			case "mss":
				o.kind, at = 2, at+4
			case "ws":
				o.kind, at = 3, at+3
			case "sok":
				o.kind, at = 4, at+2
			case "ts":
				o.kind, at = 8, at+10
			default:
				m := p0fEOL.FindStringSubmatch(name)
				if m == nil {
					return nil, fmt.Errorf("olayout %s: option %s: want eol+N, nop, mss, ws, sok or ts (sack and ?N have no fixed length)", cbpf.QuoteExpr(f[5]), cbpf.QuoteExpr(name))
				}
				o.name, o.kind, at = "eol", 0, at+1
				sig.eolPad, _ = strconv.Atoi(m[1])
				sig.eolPadAt = at
				at += sig.eolPad
			}
			sig.layout = append(sig.layout, o)
		}
	}
	sig.optLen = at - 20
	if sig.optLen > 40 {
		return nil, fmt.Errorf("olayout %s: %d bytes of options, more than 40", cbpf.QuoteExpr(f[5]), sig.optLen)
	}
	if f[6] != "" {
		for _, q := range strings.Split(f[6], ",") {
			if !p0fQuirks[q] {
				return nil, fmt.Errorf("quirk %s unknown", cbpf.QuoteExpr(q))
			}
			sig.quirks[q] = true
		}
	}
	if sig.quirks["opt+"] && sig.eolPad <= 0 {
		return nil, fmt.Errorf("quirk opt+ needs padding after eol (eol+N with N > 0)")
	}
	switch f[7] {
	case "0", "+", "*":
		sig.pclass = f[7]
	default:
		return nil, fmt.Errorf("pclass %s: want 0, + or *", cbpf.QuoteExpr(f[7]))
	}
	return sig, nil
}

func starOrNumber(s string, limit int) (int, error) {
	if s == "*" {
		return -1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > limit {
		return 0, fmt.Errorf("%s: want * or 0 to %d", cbpf.QuoteExpr(s), limit)
	}
	return n, nil
}

func (sig *p0fSig) option(name string) (tcpOpt, bool) {
	for _, o := range sig.layout {
		if o.name == name {
			return o, true
		}
	}
	return tcpOpt{}, false
}

type p0fStep struct{ expr, doc string }

// steps returns the checks of the signature for IP version v, as
// pcap-filter expressions.
func (sig *p0fSig) steps(v int) ([]p0fStep, error) {
	var steps []p0fStep
	add := func(doc, format string, args ...any) {
		steps = append(steps, p0fStep{expr: fmt.Sprintf(format, args...), doc: doc})
	}
	// tcp(off, size) is a TCP header field; ip(...) an IP header field.
	tcp := func(off, size int) string {
		if v == 6 {
			return fmt.Sprintf("ip6[%d:%d]", ipv6HeaderLen+off, size)
		}
		return fmt.Sprintf("tcp[%d:%d]", off, size)
	}
	if v == 4 {
		add("IPv4 TCP", "ip and tcp")
	} else {
		add("IPv6 TCP, no extension headers", "ip6 and ip6[6] == 6")
	}
	add("SYN", "%s & 0x02 != 0", tcp(13, 1))
	ttl := "ip[8]"
	if v == 6 {
		ttl = "ip6[7]"
	}
	if !sig.ttlUnchecked {
		add(fmt.Sprintf("ttl <= %d", sig.ittl), "%s <= %d", ttl, sig.ittl)
		if sig.ittl > 32 {
			add(fmt.Sprintf("ttl > %d", sig.ittl-35), "%s > %d", ttl, sig.ittl-35)
		}
	}
	if sig.olen >= 0 {
		if v == 4 {
			add(fmt.Sprintf("IP options length %d", sig.olen), "ip[0] & 0xf == %d", 5+sig.olen/4)
		} else if sig.olen != 0 {
			return nil, fmt.Errorf("olen %d: IPv6 extension headers are not supported", sig.olen)
		}
	}
	mss, hasMSS := sig.option("mss")
	mssField := tcp(mss.at+2, 2)
	if sig.mss >= 0 {
		if !hasMSS {
			if sig.mss != 0 {
				return nil, fmt.Errorf("mss %d without mss in olayout", sig.mss)
			}
		} else {
			add(fmt.Sprintf("mss == %d", sig.mss), "%s == %d", mssField, sig.mss)
		}
	}
	win := tcp(14, 2)
	switch {
	case sig.wsize < 0:
	case sig.wsizeKind == "":
		add(fmt.Sprintf("window == %d", sig.wsize), "%s == %d", win, sig.wsize)
	case sig.wsizeKind == "%":
		add(fmt.Sprintf("window a multiple of %d", sig.wsize), "%s %% %d == 0", win, sig.wsize)
	case sig.wsizeKind == "mss*":
		if !hasMSS {
			return nil, fmt.Errorf("wsize mss*%d without mss in olayout", sig.wsize)
		}
		add(fmt.Sprintf("window == mss * %d", sig.wsize), "%s == %s * %d", win, mssField, sig.wsize)
	case sig.wsizeKind == "mtu*":
		if !hasMSS {
			add(fmt.Sprintf("window == 1500 * %d", sig.wsize), "%s == %d", win, 1500*sig.wsize)
			break
		}
		hdr := 40
		if v == 6 {
			hdr = 60
		}
		add(fmt.Sprintf("window == (mss + %d) * %d", hdr, sig.wsize), "%s == (%s + %d) * %d", win, mssField, hdr, sig.wsize)
	}
	ws, hasWS := sig.option("ws")
	if sig.scale >= 0 {
		if hasWS {
			add(fmt.Sprintf("window scale == %d", sig.scale), "%s == %d", tcp(ws.at+2, 1), sig.scale)
		} else if sig.scale != 0 {
			return nil, fmt.Errorf("scale %d without ws in olayout", sig.scale)
		}
	}
	if !sig.quirks["bad"] {
		add("data offset fits the options", "%s >> 4 == %d", tcp(12, 1), 5+(sig.optLen+3)/4)
	}
	for _, o := range sig.layout {
		add("option "+o.name, "%s == %d", tcp(o.at, 1), o.kind)
	}
	if sig.eolPad > 0 {
		var chunks []string
		for at, left := sig.eolPadAt, sig.eolPad; left > 0; {
			n := 4
			for n > left {
				n /= 2
			}
			chunks = append(chunks, tcp(at, n))
			at, left = at+n, left-n
		}
		if sig.quirks["opt+"] {
			add("opt+: padding not zero", "(%s != 0)", strings.Join(chunks, " != 0 or "))
		} else {
			add("padding zero", "%s == 0", strings.Join(chunks, " == 0 and "))
		}
	}
	ts, hasTS := sig.option("ts")
	needTS := func(q string) error {
		if !hasTS {
			return fmt.Errorf("quirk %s without ts in olayout", q)
		}
		return nil
	}
	if v == 4 {
		switch {
		case sig.quirks["id+"]:
			add("id+: DF and IP ID set", "ip[6] & 0x40 != 0 and ip[4:2] != 0")
		case sig.quirks["id-"]:
			add("id-: no DF, IP ID zero", "ip[6] & 0x40 == 0 and ip[4:2] == 0")
		}
		if sig.quirks["df"] {
			add("df", "ip[6] & 0x40 != 0")
		}
		if sig.quirks["0+"] {
			add("0+: reserved flag set", "ip[6] & 0x80 != 0")
		} else {
			add("reserved flag clear", "ip[6] & 0x80 == 0")
		}
	}
	if sig.quirks["ecn"] {
		ipECN := "ip[1] & 0x03 != 0"
		if v == 6 {
			ipECN = "ip6[1] & 0x30 != 0"
		}
		add("ecn", "(%s or %s & 0xc0 != 0 or %s & 0x01 != 0)", ipECN, tcp(13, 1), tcp(12, 1))
	}
	if v == 6 && sig.quirks["flow"] {
		add("flow label set", "ip6[0:4] & 0xfffff != 0")
	}
	if sig.quirks["seq-"] {
		add("seq-: sequence number zero", "%s == 0", tcp(4, 4))
	}
	switch {
	case sig.quirks["ack+"]:
		add("ack+: no ACK flag, ack number set", "%s & 0x10 == 0 and %s != 0", tcp(13, 1), tcp(8, 4))
	case sig.quirks["ack-"]:
		add("ack-: ACK flag, ack number zero", "%s & 0x10 != 0 and %s == 0", tcp(13, 1), tcp(8, 4))
	}
	switch {
	case sig.quirks["uptr+"]:
		add("uptr+: no URG flag, urgent pointer set", "%s & 0x20 == 0 and %s != 0", tcp(13, 1), tcp(18, 2))
	case sig.quirks["urgf+"]:
		add("urgf+: URG flag", "%s & 0x20 != 0", tcp(13, 1))
	}
	if sig.quirks["pushf+"] {
		add("pushf+: PSH flag", "%s & 0x08 != 0", tcp(13, 1))
	}
	if sig.quirks["ts1-"] {
		if err := needTS("ts1-"); err != nil {
			return nil, err
		}
		add("ts1-: own timestamp zero", "%s == 0", tcp(ts.at+2, 4))
	}
	if sig.quirks["ts2+"] {
		if err := needTS("ts2+"); err != nil {
			return nil, err
		}
		add("ts2+: peer timestamp set", "%s != 0", tcp(ts.at+6, 4))
	}
	if sig.quirks["exws"] {
		if !hasWS {
			return nil, fmt.Errorf("quirk exws without ws in olayout")
		}
		add("exws: window scale above 14", "%s > 14", tcp(ws.at+2, 1))
	}
	if sig.pclass != "*" {
		op := "=="
		if sig.pclass == "+" {
			op = "!="
		}
		payload := "ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)"
		if v == 6 {
			payload = "ip6[4:2] - ((ip6[52] & 0xf0) >> 2)"
		}
		add("payload "+map[string]string{"0": "empty", "+": "not empty"}[sig.pclass], "%s %s 0", payload, op)
	}
	return steps, nil
}
