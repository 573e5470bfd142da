package bpfgen

import (
	"fmt"

	"golang.org/x/net/bpf"
)

// DNS header flags (RFC 1035, 4035).
const (
	dnsFlagQR     = 0x8000
	dnsFlagOpcode = 0x7800
	dnsFlagAA     = 0x0400
	dnsFlagTC     = 0x0200
	dnsFlagRD     = 0x0100
	dnsFlagRA     = 0x0080
	dnsFlagZ      = 0x0040
	dnsFlagAD     = 0x0020
	dnsFlagCD     = 0x0010
	dnsRcode      = 0x000f
)

// MinDNSQueryUDPLength is the shortest UDP datagram (header included)
// dns_validate takes for a query: 8 bytes of UDP, 12 of DNS header and 9 of
// question, as for the two-label name "a.b", as in the original.
const MinDNSQueryUDPLength = udpHeaderLen + dnsHeaderLen + 9

// DNSValidateOptions are the dns_validate generator's own flags.
type DNSValidateOptions struct {
	// Strict (--strict) also counts the RD and RA flags as malformed.
	Strict bool
	// NoL4Check (--no-l4-check) leaves out the checks of IP version, UDP,
	// first fragment, IPv4 header length and destination port 53.
	NoL4Check bool
}

// DNSValidate returns a rule matching malformed DNS queries: a UDP length
// below [MinDNSQueryUDPLength]; header flags other than CD, AD and Z (and RD
// and RA unless strict), that is a response, an opcode, AA, TC or an RCODE;
// a QDCOUNT other than 1; an ANCOUNT or NSCOUNT other than 0; an ARCOUNT
// above 1 (one OPT record). Unless NoL4Check, only UDP to port 53 is looked
// at; anything else does not match.
func DNSValidate(opts Options, v DNSValidateOptions) (*Program, error) {
	allowed := uint32(dnsFlagCD | dnsFlagAD | dnsFlagZ)
	if !v.Strict {
		allowed |= dnsFlagRD | dnsFlagRA
	}
	bad := 0xffff &^ allowed
	match, noMatch := opts.results()
	a := &asm{}
	a.comment("dns_validate%s%s, IPv%d, IP header at %d", flagText(v.Strict, " --strict"), flagText(v.NoL4Check, " --no-l4-check"), ipVersion(opts), opts.L3Offset)
	a.comment("match (malformed): ret #%d, no match: ret #%d", match, noMatch)
	if !v.NoL4Check {
		udpPortCheck(a, opts, 53, "notdns")
	}
	// X + udp is the UDP header.
	udp := opts.L3Offset
	if opts.IPv6 {
		udp += ipv6HeaderLen // X is still 0
	} else if v.NoL4Check {
		a.emit(bpf.LoadMemShift{Off: opts.L3Offset}, "X = IPv4 header length")
	}
	a.emit(bpf.LoadIndirect{Off: udp + 4, Size: 2}, "UDP length")
	a.jlt(MinDNSQueryUDPLength, "match", `shorter than a query for "a.b"`)
	dns := udp + udpHeaderLen
	a.emit(bpf.LoadIndirect{Off: dns + 2, Size: 2}, "flags")
	a.jset(bad, "match", fmt.Sprintf("flags other than CD, AD, Z%s", flagText(!v.Strict, ", RD, RA")))
	a.emit(bpf.LoadIndirect{Off: dns + 4, Size: 2}, "QDCOUNT")
	a.jne(1, "match")
	a.emit(bpf.LoadIndirect{Off: dns + 6, Size: 4}, "ANCOUNT, NSCOUNT")
	a.jne(0, "match")
	a.emit(bpf.LoadIndirect{Off: dns + 10, Size: 2}, "ARCOUNT")
	a.jgt(1, "match")
	a.label("nomatch")
	endNotDNS(a, noMatch, !v.NoL4Check)
	a.label("match")
	a.ret(match, "malformed")
	return a.resolve()
}
