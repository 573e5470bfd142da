// Package bpfgen generates classic BPF (cBPF) rules that match packets by
// things operators name during an attack: DNS query names, the last bytes of
// a packet, p0f TCP signatures and pcap-filter expressions.
//
// It is a drop-in replacement for the generators of the original bpftools
// bpfgen: the same patterns and signatures give rules that match the same
// packets, in the same "N,op jt jf k,..." bytecode that iptables xt_bpf,
// L4Drop and xdpcap take. A match returns [Match] (65535) and no match 0,
// swapped by [Options.Negate]. Like every cBPF program, a rule that loads
// past the end of a packet ends with 0: no match, even negated.
//
// Rules see the packet from [Options.L3Offset] on: 0 when the packet starts
// at the IP header, as in xt_bpf and L4Drop rules; 14 for Ethernet frames.
package bpfgen

import (
	"errors"

	"golang.org/x/net/bpf"
)

// Match is what a rule returns for a packet it matches (and NoMatch for the
// others), unless negated.
const (
	Match   = 65535
	NoMatch = 0
)

// ErrPattern is wrapped by errors about a generator's arguments: patterns,
// signatures, hex strings, expressions.
var ErrPattern = errors.New("bad generator argument")

// Options are what every generator takes, as the original's -6, -n and -o.
type Options struct {
	// IPv6 makes the rule for IPv6 packets, with the fixed 40-byte header
	// (extension headers are not skipped, as in the original).
	IPv6 bool
	// Negate swaps the results: a match returns 0 and anything else Match.
	// The dns and dns_validate rules negate their verdict on DNS queries
	// only: with their layer-4 checks on, packets that are not UDP to port
	// 53 never match, as when iptables checks "-p udp --dport 53" first.
	Negate bool
	// L3Offset is where the IP header starts in the packet.
	L3Offset uint32
}

func (o Options) results() (match, noMatch uint32) {
	if o.Negate {
		return NoMatch, Match
	}
	return Match, NoMatch
}

// Program is a generated rule.
type Program struct {
	Insns []bpf.Instruction
	// Listing is a readable assembly listing with labels and comments.
	Listing string
}
