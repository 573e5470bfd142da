// Command cbpfc compiles a pcap-filter expression or classic BPF bytecode to
// eBPF or C for XDP, and reports instruction counts.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/cbpfc"
)

const usage = `Usage: cbpfc [-linktype T] [-emit cbpf|ebpf|c|xdp-c|stats] EXPR-or-BYTECODE

Compiles a pcap-filter expression (through libpcap, for link type T) or
classic BPF bytecode ("N,op jt jf k,..." as tcpdump -ddd and iptables
--bytecode write it) to eBPF or C for XDP.

  -emit cbpf   the classic BPF, as tcpdump -d lists it
  -emit ebpf   a minimal XDP program around the filter (match: XDP_PASS,
               no match: XDP_DROP), as eBPF assembly
  -emit c      the filter as a C function for an XDP program
  -emit xdp-c  a whole minimal XDP program in C, for clang -O2 -target bpf
  -emit stats  one JSON line: cBPF instructions, eBPF instructions of the
               minimal XDP program, and the instructions the verifier
               processed loading it (needs root)

Examples:
  cbpfc 'tcp port 80'
  cbpfc -emit ebpf 'ip6 and udp dst port 53'
  cbpfc -linktype RAW -emit c -function drop_dns 'udp dst port 53'
  cbpfc -emit stats '4,40 0 0 12,21 0 1 2048,6 0 0 262144,6 0 0 0'
  tcpdump -ddd 'icmp' | tr '\n' ',' | xargs -0 cbpfc -emit c

Errors name the cBPF instruction (counted from 0) and exit with status 1.

Flags:
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cbpfc:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cbpfc", flag.ContinueOnError)
	// Parse's errors go out once, through main; help goes to stdout.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	printUsage := func(w io.Writer) {
		fmt.Fprint(w, usage)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	linktype := fs.String("linktype", "EN10MB", "link type of the packets for an expression: EN10MB (Ethernet), RAW (from the IP header), IPV4, IPV6, ...")
	emit := fs.String("emit", "cbpf", "what to print: cbpf, ebpf, c, xdp-c or stats")
	function := fs.String("function", "filter", "name of the C function (-emit c, xdp-c)")
	snaplen := fs.Int("snaplen", 262144, "snapshot length libpcap compiles the expression for")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		printUsage(stdout)
		return nil
	} else if err != nil {
		return fmt.Errorf("%w (cbpfc -h for usage)", err)
	}
	if fs.NArg() == 0 {
		printUsage(stderr)
		return errors.New("no expression or bytecode given")
	}
	// Every flag is checked before the input is compiled.
	switch *emit {
	case "cbpf", "ebpf", "c", "xdp-c", "stats":
	default:
		return fmt.Errorf("-emit %s: want cbpf, ebpf, c, xdp-c or stats", cbpf.QuoteExpr(*emit))
	}
	lt, err := cbpf.ParseLinkType(*linktype)
	if err != nil {
		return fmt.Errorf("-linktype: %w", err)
	}
	if *snaplen < 1 || *snaplen > cbpf.DefaultSnaplen {
		return fmt.Errorf("-snaplen %d: want 1 to %d", *snaplen, cbpf.DefaultSnaplen)
	}
	input := strings.Join(fs.Args(), " ")
	prog, err := load(input, lt, *snaplen)
	if err != nil {
		return err
	}
	switch *emit {
	case "cbpf":
		fmt.Fprint(stdout, cbpf.Listing(prog))
	case "ebpf":
		insns, err := cbpfc.XDPProgram(prog)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%v", insns)
	case "c":
		src, err := cbpfc.ToC(prog, cbpfc.COpts{FunctionName: *function})
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, src)
	case "xdp-c":
		src, err := cbpfc.XDPProgramC(prog, *function)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, cbpfc.CPrelude+src+"\nchar _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n")
	case "stats":
		s, err := cbpfc.VerifierStats(prog)
		if err != nil {
			return err
		}
		out, _ := json.Marshal(s)
		fmt.Fprintln(stdout, string(out))
	}
	return nil
}

func load(input string, lt cbpf.LinkType, snaplen int) ([]bpf.Instruction, error) {
	if cbpf.IsBytecode(input) {
		prog, err := cbpf.Parse(input)
		if err != nil {
			return nil, fmt.Errorf("bytecode: %w", err)
		}
		return prog, nil
	}
	prog, err := cbpf.Compile(input, lt, snaplen)
	if err != nil {
		return nil, fmt.Errorf("expression: %w", err)
	}
	return prog, nil
}

// statsLine is the line -emit stats prints.
type statsLine = cbpfc.Stats
