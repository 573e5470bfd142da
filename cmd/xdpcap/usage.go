package main

const usage = `xdpcap: tcpdump for XDP programs.

Usage:
  xdpcap [flags] HOOK [HOOK...] OUTPUT|- [EXPR...]   capture from running XDP programs
  xdpcap -entry [flags] HOOK... OUTPUT|- [EXPR...]    also capture packets as they enter
  xdpcap -r IN [-w OUT] [flags] [EXPR...]            run the filter over a capture file
  xdpcap -clear HOOK [HOOK...]                        remove filters a killed xdpcap left
  xdpcap -header                                      print xdpcap.h, for C programs

HOOK is an xdpcap hook pinned on bpffs: the program array an XDP program
tail calls with xdpcap_exit(ctx, &hook, action) (xdpcap.h) or xdpcap.Exit
(Go). Several hooks, as arguments or comma-separated, are captured at
once. OUTPUT is a pcap or pcapng file, or - for stdout (implies -q and
-flush). EXPR is a pcap-filter expression (see pcap-filter(7)) or cBPF
bytecode "N,op jt jf k,..." as tcpdump -ddd prints it; without EXPR every
packet is captured. The filter sees the packet as the XDP program leaves
it (the first buffer of a multi-buffer packet); the whole packet is
captured, up to the snap length.

Each packet is recorded with the action its XDP program took. pcapng
output shows it and the hook: one interface per hook and action, named
HOOK:XDPDrop and so on (HOOK is the hook's path, relative to /sys/fs/bpf
when it is there), and the packet's verdict option and comment. pcap
output cannot.

-entry also captures each packet as it enters the XDP program, before the
program acts on it or rewrites it: pcapng shows those on interface
HOOK:Entry, with no verdict and the comment "entry, before the XDP
program". The program must support it (xdpcap.h: xdpcap_entry, and its
body in the hook's slot 6). With -actions none, xdpcap captures at entry
only.

-r runs the very filter code a live capture would attach over each
packet of a capture file, writes the matches with -w and prints "N
packets matched of M": test a filter on a capture before attaching it.
Filters that read only the packet run in xdpcap's interpreter of their
eBPF code, checked against the kernel (BPF_PROG_TEST_RUN) on the first 256
packets and one in 1024 after; the others, and packets longer than 3000
bytes, run in the kernel. As in XDP, the cBPF len is the captured length,
not the length on the wire.

Every second xdpcap prints, per action, packets received/matched by the
filter, and lost records (buffer full); a summary at exit. It stops on
Ctrl-C, SIGTERM or after -c packets, and takes its filters out of the
hooks. A capture killed with SIGKILL leaves them in: the next xdpcap on
the hook, or xdpcap -clear, removes them.

Examples:
  xdpcap /sys/fs/bpf/xdpcap_hook dump.pcap 'udp port 53'
  xdpcap -actions drop,tx -format pcapng /sys/fs/bpf/xdpcap_hook drops.pcapng
  xdpcap /sys/fs/bpf/xdpcap_hook - 'tcp[tcpflags] & tcp-syn != 0' | tcpdump -n -r -
  xdpcap -c 100 -s 128 /sys/fs/bpf/stage1 /sys/fs/bpf/stage2 both.pcapng icmp
  xdpcap -r trace.pcap -w matched.pcap 'ip6 and udp'
  xdpcap -clear /sys/fs/bpf/xdpcap_hook

Flags:
`
