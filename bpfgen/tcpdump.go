package bpfgen

import (
	"fmt"
	"strings"

	"github.com/l4drop/l4drop/cbpf"
)

// TcpdumpLinkType returns the link type a pcap-filter expression is compiled
// for, from where the IP header starts, as the original did: 0 raw IP (IPv6
// only with -6), 14 Ethernet, 16 Linux cooked capture, 18 Ethernet with one
// VLAN tag (the expression gets "vlan and").
func TcpdumpLinkType(opts Options) (lt cbpf.LinkType, vlan bool, err error) {
	switch opts.L3Offset {
	case 0:
		if opts.IPv6 {
			return cbpf.LinkTypeIPv6, false, nil
		}
		return cbpf.LinkTypeRaw, false, nil
	case 14:
		return cbpf.LinkTypeEthernet, false, nil
	case 16:
		return cbpf.LinkTypeLinuxSLL, false, nil
	case 18:
		return cbpf.LinkTypeEthernet, true, nil
	}
	return 0, false, fmt.Errorf("%w: no link type has the IP header at offset %d (use 0, 14, 16 or 18)", ErrPattern, opts.L3Offset)
}

// Tcpdump returns a rule compiled by libpcap from a pcap-filter expression
// (see pcap-filter(7)) for the link type [TcpdumpLinkType] gives. Negate
// compiles "not (EXPR)".
func Tcpdump(opts Options, expr string) (*Program, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("%w: tcpdump: empty expression", ErrPattern)
	}
	return compileExpr(opts, expr, []string{"tcpdump " + expr})
}

func compileExpr(opts Options, expr string, header []string) (*Program, error) {
	lt, vlan, err := TcpdumpLinkType(opts)
	if err != nil {
		return nil, err
	}
	if opts.Negate {
		expr = "not (" + expr + ")"
	}
	if vlan {
		expr = "vlan and (" + expr + ")"
	}
	insns, err := cbpf.Compile(expr, lt, Match)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPattern, err)
	}
	var b strings.Builder
	for _, h := range header {
		fmt.Fprintf(&b, "; %s\n", h)
	}
	fmt.Fprintf(&b, "; %s, link type %v\n", expr, lt)
	b.WriteString(cbpf.Listing(insns))
	return &Program{Insns: insns, Listing: b.String()}, nil
}
