package cbpf

import (
	"fmt"
	"strconv"
	"strings"
)

// LinkType is a data link type as libpcap's API uses it (a DLT_ value): it
// tells where a packet starts, and so how an expression is compiled.
//
// DLT_ values are what pcap_open_dead and pcap_datalink use; capture files
// store LINKTYPE_ values instead, which differ for a few types. Use
// [LinkTypeFromPcap] for those.
type LinkType int

// Link types the project meets. The values are Linux's DLT_ values.
const (
	LinkTypeNull      LinkType = 0   // DLT_NULL: BSD loopback, a 4-byte host-order family first
	LinkTypeEthernet  LinkType = 1   // DLT_EN10MB: Ethernet, 802.1Q tags allowed
	LinkTypeRaw       LinkType = 12  // DLT_RAW: the packet starts at an IPv4 or IPv6 header
	LinkTypeLoop      LinkType = 108 // DLT_LOOP: OpenBSD loopback, a 4-byte network-order family first
	LinkTypeLinuxSLL  LinkType = 113 // DLT_LINUX_SLL: Linux "cooked" capture, 16-byte header
	LinkTypeIPv4      LinkType = 228 // DLT_IPV4: the packet starts at an IPv4 header
	LinkTypeIPv6      LinkType = 229 // DLT_IPV6: the packet starts at an IPv6 header
	LinkTypeLinuxSLL2 LinkType = 276 // DLT_LINUX_SLL2: Linux "cooked" capture v2, 20-byte header
)

// String returns libpcap's name for the link type, such as "EN10MB" or "RAW",
// or "DLT(n)" for a value libpcap does not know.
func (lt LinkType) String() string {
	if name, ok := datalinkName(int(lt)); ok {
		return name
	}
	return fmt.Sprintf("DLT(%d)", int(lt))
}

// ParseLinkType reads a link type as libpcap names it (EN10MB, RAW, IPV4,
// IPV6, LINUX_SLL, LINUX_SLL2, NULL, ...; case-insensitive, an optional DLT_
// prefix is ignored) or as a DLT_ number.
func ParseLinkType(name string) (LinkType, error) {
	s := strings.TrimSpace(name)
	if n, err := strconv.ParseUint(s, 0, 31); err == nil {
		return LinkType(n), nil
	}
	if len(s) > 4 && strings.EqualFold(s[:4], "DLT_") {
		s = s[4:]
	}
	if s == "" {
		return 0, fmt.Errorf("link type %s: empty", QuoteExpr(name))
	}
	v, ok := datalinkValue(s)
	if !ok {
		return 0, fmt.Errorf("link type %s: unknown to libpcap (try EN10MB, RAW, IPV4, IPV6, LINUX_SLL or a DLT number)", QuoteExpr(name))
	}
	return LinkType(v), nil
}

// pcapToDLT lists the LINKTYPE_ values of capture files that are not the
// DLT_ value of the same type on Linux. Every other value below 104 or from
// 104 on is the same in both.
var pcapToDLT = map[uint32]LinkType{
	100: 11,          // ATM_RFC1483
	101: LinkTypeRaw, // RAW
	102: 15,          // SLIP_BSDOS
	103: 16,          // PPP_BSDOS
	106: 19,          // ATM_CLIP (Linux)
}

// LinkTypeFromPcap returns the DLT_ value for a LINKTYPE_ value read from a
// pcap or pcapng file (gopacket's layers.LinkType holds these). The upper
// bits of the pcap header's field, which carry FCS information, are ignored.
// For example LINKTYPE_RAW (101) is DLT_RAW (12); LINKTYPE_IPV4 (228) and
// LINKTYPE_IPV6 (229) are the same in both.
func LinkTypeFromPcap(linktype uint32) LinkType {
	linktype &= 0x0fffffff
	if lt, ok := pcapToDLT[linktype]; ok {
		return lt
	}
	return LinkType(linktype)
}
