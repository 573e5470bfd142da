// Package cbpf reads, writes, checks, compiles and runs classic BPF (cBPF),
// the bytecode of tcpdump, libpcap, the kernel's socket filters and iptables
// xt_bpf.
//
// Programs are []golang.org/x/net/bpf.Instruction. The package handles the
// text forms people paste around:
//
//   - "N,op jt jf k,op jt jf k,..." as printed by tcpdump -ddd (on one line,
//     joined by commas) and taken by iptables --bytecode and bpftools: [Format];
//   - tcpdump -dd C arrays, "{ 0x28, 0, 0, 0x0000000c },": [FormatC];
//   - tcpdump -d listings, "(000) ldh      [12]": [Listing].
//
// [Parse] reads all of these but the listing.
//
// [Compile] turns a pcap-filter expression into cBPF through libpcap, and
// [Interpret] runs a program on a packet in libpcap's own interpreter, the
// reference the rest of the project is measured against. Both use libpcap
// through cgo; this is the only cgo in the module.
package cbpf
