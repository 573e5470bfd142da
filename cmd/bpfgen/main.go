// Command bpfgen generates classic BPF rules from DNS names, packet
// suffixes, p0f signatures and tcpdump expressions, with the command line of
// the original bpftools bpfgen. Run "bpfgen -h" for examples.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/l4drop/l4drop/bpfgen"
	"github.com/l4drop/l4drop/cbpf"
)

const usage = `Usage: bpfgen [-6] [-n] [-o L3OFF] [-s] GENERATOR -- [GENERATOR FLAGS] ARGS...

Generates a classic BPF rule and prints it as "N,op jt jf k,...", the
bytecode iptables -m bpf --bytecode, L4Drop rules (bpf:) and xdpcap take.
A matching packet gets 65535, any other 0.

Options (before --):
  -6, --inet6     the packets are IPv6 (fixed 40-byte header); default IPv4
  -n, --negate    swap the results: a match gives 0, anything else 65535
                  (dns and dns_validate: only for DNS queries to port 53;
                  other packets, and packets too short, never match)
  -o, --offset N  the IP header starts at byte N (default 0: the packet
                  starts at the IP header, as in xt_bpf and L4Drop; 14 for
                  Ethernet frames)
  -s, --assembly  print a labelled assembly listing instead of bytecode
  -h, --help      this help; "bpfgen GENERATOR -- -h" explains a generator

Generators:
  dns           DNS queries whose first question name matches a pattern
  dns_validate  malformed DNS queries
  suffix        packets ending with the given bytes
  p0f           TCP SYNs fitting a p0f v3 signature
  tcpdump       a pcap-filter expression, compiled by libpcap

Examples:
  bpfgen dns -- example.com                  the name exactly
  bpfgen dns -- -i '*.example.com'           one label, then example.com, any case
  bpfgen dns -- 'example.**' '*{8-63}.example.net'
  bpfgen -6 dns -- example.com               over IPv6
  bpfgen -o 14 -s dns -- example.com         Ethernet frames, as assembly
  bpfgen dns_validate -- --strict
  bpfgen suffix -- 'de ad xx ef'
  bpfgen p0f -- '*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0'
  bpfgen tcpdump -- 'udp and dst port 53'

Use with iptables (its bpf match takes at most 64 instructions; where
iptables checks UDP and the port, dns --no-l4-check saves 9):
  iptables -t raw -A PREROUTING -p udp --dport 53 -m bpf \
      --bytecode "$(bpfgen dns -- --no-l4-check '*.example.com')" -j DROP
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type command struct {
	opts     bpfgen.Options
	assembly bool
	gen      string
	args     []string
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd, err := parseArgs(args)
	if errors.Is(err, bpfgen.ErrHelp) {
		if cmd != nil && cmd.gen != "" {
			fmt.Fprint(stdout, bpfgen.GeneratorHelp(cmd.gen))
		} else {
			fmt.Fprint(stdout, usage)
		}
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bpfgen: %v\nRun 'bpfgen -h' for usage.\n", err)
		return 1
	}
	prog, err := bpfgen.Generate(cmd.opts, cmd.gen, cmd.args)
	if errors.Is(err, bpfgen.ErrHelp) {
		fmt.Fprint(stdout, bpfgen.GeneratorHelp(cmd.gen))
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bpfgen: %v\n", err)
		return 1
	}
	if cmd.assembly {
		fmt.Fprint(stdout, prog.Listing)
		return 0
	}
	text, err := cbpf.Format(prog.Insns)
	if err != nil {
		fmt.Fprintf(stderr, "bpfgen: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, text)
	return 0
}

// parseArgs reads the options before "--"; the generator's own flags may
// stand there too, after the generator's name.
func parseArgs(args []string) (*command, error) {
	c := &command{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			c.args = append(c.args, args[i+1:]...)
			break
		}
		switch {
		case a == "-h" || a == "--help" || a == "-help":
			return c, bpfgen.ErrHelp
		case a == "-6" || a == "--inet6":
			c.opts.IPv6 = true
		case a == "-n" || a == "--negate":
			c.opts.Negate = true
		case a == "-s" || a == "--assembly":
			c.assembly = true
		case a == "-o" || a == "--offset" || strings.HasPrefix(a, "-o") || strings.HasPrefix(a, "--offset="):
			v := strings.TrimPrefix(strings.TrimPrefix(a, "--offset="), "-o")
			if a == "-o" || a == "--offset" {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("%s needs a number", a)
				}
				i++
				v = args[i]
			}
			n, err := strconv.ParseUint(strings.TrimPrefix(v, "="), 10, 16)
			if err != nil {
				return nil, fmt.Errorf("offset %s: want a number of bytes", cbpf.QuoteExpr(v))
			}
			c.opts.L3Offset = uint32(n)
		case c.gen == "" && !strings.HasPrefix(a, "-"):
			if bpfgen.GeneratorHelp(a) == "" {
				return nil, fmt.Errorf("unknown generator %s (dns, dns_validate, suffix, p0f, tcpdump)", cbpf.QuoteExpr(a))
			}
			c.gen = a
		case c.gen != "":
			c.args = append(c.args, a) // a generator flag or argument before --
		default:
			return nil, fmt.Errorf("unknown option %s", cbpf.QuoteExpr(a))
		}
	}
	if c.gen == "" {
		return nil, errors.New("no generator given")
	}
	return c, nil
}
