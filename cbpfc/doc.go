// Package cbpfc compiles classic BPF (cBPF), the bytecode of tcpdump, libpcap
// and iptables xt_bpf, to eBPF instructions or to a C function, for use in XDP
// programs.
//
// The compiled filter behaves like the kernel's and libpcap's cBPF
// interpreters on the same bytes:
//
//   - a load past the end of the packet ends the filter with 0 (no match);
//   - A, X and the scratch memory M[0..15] start at 0;
//   - division or modulo by zero ends the filter with 0;
//   - "ret A" and "ret #k" end the filter with that value; non-zero is a match;
//   - the len extension is the packet length, PacketEnd - PacketStart (for
//     a multi-buffer frame, the part in the first buffer, which is all the
//     filter can load);
//   - "ldx 4*([k]&0xf)" (msh) and "ld [x+k]" work as in libpcap; an indirect
//     load whose offset X+k does not fit in 32 bits returns 0, as in libpcap;
//   - loads reaching past offset 65535 always fail: XDP packets are shorter,
//     and the verifier tracks no packet offset beyond it;
//   - shifts by 32 or more shift by the amount modulo 32, as libpcap's
//     interpreter does on x86 (the kernel refuses constant ones).
//
// Backward jumps, which libpcap emits for "protochain" (a "ja" whose offset
// wraps around 2^32), are compiled as bounded loops: a filter that takes
// backward jumps more than [MaxBackwardJumps] times ends with 0. Each back
// edge also passes a may_goto (which never jumps that soon), so that the
// verifier checks a few iterations rather than all: filters with loops need
// Linux 6.9 or later.
//
// The extensions XDP can answer are supported:
//
//   - len: the packet length;
//   - ifidx: the ingress interface index (xdp_md->ingress_ifindex, needs the context);
//   - cpu: bpf_get_smp_processor_id();
//   - rand: bpf_get_prandom_u32();
//   - type: the kernel's skb->pkt_type as the stack would set it for a frame
//     received on the interface, from the Ethernet destination address at
//     the start of the frame (xdp_md->data, needs the context): 1 broadcast
//     (PACKET_BROADCAST), 2 multicast (PACKET_MULTICAST), 0 any other
//     (PACKET_HOST: XDP sees only received frames, and a NIC not in
//     promiscuous mode delivers only its own unicast address). It never
//     returns 3 (PACKET_OTHERHOST) nor 4 (PACKET_OUTGOING). A frame shorter
//     than 6 bytes ends the filter with 0.
//
// Other extensions and negative offsets (SKF_NET_OFF, SKF_LL_OFF) are refused
// with an [*Error] naming the instruction and wrapping [ErrUnsupported].
//
// Packet bounds are checked as seldom as possible: a check at a load covers
// the largest extent that every path from there loads (or that ends with 0
// anyway), so a typical filter checks once or twice. Before code generation
// the filter is simplified: constants and the ranges of A and X are
// propagated (narrowed on each way out of a comparison), jumps whose
// outcome is known are taken, two comparisons in a row that one can do
// merge, code from which every path ends with 0 becomes "ret #0", reloads,
// masks that clear nothing and dead stores go, code that tests at fixed
// offsets what other code tests through X becomes a jump into that code
// with X set (libpcap's port tests for IPv6 and for IPv4: one copy), and
// 16- and 32-bit loads that are only compared for equality or tested
// bitwise stay in network byte order (the constant is swapped instead). The eBPF backend also tests
// a port range with one comparison, loads through the register that checks
// the bounds, merges tests of packet bytes already checked that pass into
// one another and fail alike into one load of up to 8 bytes, masked and
// compared once (an IPv6 address in two, the IPv4 protocol and fragment
// offset in one), loads only the bytes a mask keeps, and lays out the code
// so that the verifier, which walks each path, can stop early where paths
// meet.
//
// The C backend emits the same checks as plain C; clang -O2 -target bpf
// builds it into code the verifier accepts.
package cbpfc
