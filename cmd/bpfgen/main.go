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

var genHelp = map[string]string{
	"dns": `Usage: bpfgen [OPTIONS] dns -- [-i] [--no-l4-check] PATTERN...

Matches DNS queries whose first question name matches any PATTERN. Names
are compared label by label, as in the packet:
  example.com        exactly example.com (leading and trailing dots ignored)
  *.example.com      one label of any length, then example.com
  *{4-10}.example.com  one label of 4 to 10 bytes, then example.com
  fin?.me            ? is any one character: fint.me, finX.me, not fin.me
  example.**         example followed by anything: example.com, example.co.uk
  ex**               a first label starting with ex: ex.com, example.org
  a%2eb.com          %XX is a byte in hex: the label "a.b", then com
Braces outside *{min-max} (1 <= min <= max <= 63), ** before the end, blanks,
control and non-ASCII bytes are refused: write such bytes as %XX.
Flags:
  -i, --ignorecase   compare ASCII letters ignoring case
  --no-l4-check      do not check IP version, UDP, first fragment, IPv4
                     header length and destination port 53 (the original
                     left that to iptables -p udp --dport 53)
Compressed names (a pointer in the question) never match.
`,
	"dns_validate": `Usage: bpfgen [OPTIONS] dns_validate -- [--strict] [--no-l4-check]

Matches malformed DNS queries to UDP port 53: a UDP length below 29 bytes
(shorter than a query for "a.b"), flags other than CD, AD and Z (RD and RA
are allowed too unless --strict), QDCOUNT other than 1, ANCOUNT or NSCOUNT
other than 0, ARCOUNT above 1.
Flags:
  -s, --strict       RD and RA count as malformed too
  --no-l4-check      do not check IP version, UDP and destination port 53
`,
	"suffix": `Usage: bpfgen [OPTIONS] suffix -- HEX...

Matches packets whose last bytes are HEX (the arguments joined, spaces
ignored); xx is a byte of any value. Example: bpfgen suffix -- 0102xx04
`,
	"p0f": `Usage: bpfgen [OPTIONS] p0f -- SIGNATURE

Matches TCP SYN and SYN+ACK packets fitting a p0f v3 signature
ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass, as in p0f.fp.
Example (Linux 3.11 and newer):
  bpfgen p0f -- '*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0'
`,
	"tcpdump": `Usage: bpfgen [OPTIONS] tcpdump -- EXPRESSION...

Compiles a pcap-filter expression with libpcap for the link type -o implies:
0 raw IP (IPv6 with -6), 14 Ethernet, 16 Linux cooked, 18 Ethernet with a
VLAN tag. Example: bpfgen -o 14 tcpdump -- 'tcp dst port 80'
`,
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errHelp ends a run that printed help.
var errHelp = errors.New("help")

type command struct {
	opts     bpfgen.Options
	assembly bool
	gen      string
	args     []string
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd, err := parseArgs(args)
	if errors.Is(err, errHelp) {
		if cmd != nil && cmd.gen != "" {
			fmt.Fprint(stdout, genHelp[cmd.gen])
		} else {
			fmt.Fprint(stdout, usage)
		}
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bpfgen: %v\nRun 'bpfgen -h' for usage.\n", err)
		return 1
	}
	prog, err := generate(cmd)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, genHelp[cmd.gen])
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
			return c, errHelp
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
			if _, ok := genHelp[a]; !ok {
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

func generate(c *command) (*bpfgen.Program, error) {
	switch c.gen {
	case "dns":
		var d bpfgen.DNSOptions
		var patterns []string
		for i, a := range c.args {
			switch a {
			case "-i", "--ignorecase":
				d.CaseInsensitive = true
			case "--no-l4-check":
				d.NoL4Check = true
			case "-h", "--help":
				return nil, errHelp
			case "--":
				patterns = append(patterns, c.args[i+1:]...)
			default:
				if strings.HasPrefix(a, "-") {
					return nil, fmt.Errorf("dns: unknown flag %s", cbpf.QuoteExpr(a))
				}
				patterns = append(patterns, a)
				continue
			}
			if a == "--" {
				break
			}
		}
		return bpfgen.DNS(c.opts, d, patterns...)
	case "dns_validate":
		var v bpfgen.DNSValidateOptions
		for _, a := range c.args {
			switch a {
			case "-s", "--strict":
				v.Strict = true
			case "--no-l4-check":
				v.NoL4Check = true
			case "-h", "--help":
				return nil, errHelp
			default:
				return nil, fmt.Errorf("dns_validate: unknown argument %s", cbpf.QuoteExpr(a))
			}
		}
		return bpfgen.DNSValidate(c.opts, v)
	case "suffix":
		if helpAsked(c.args) {
			return nil, errHelp
		}
		return bpfgen.Suffix(c.opts, c.args...)
	case "p0f":
		if helpAsked(c.args) {
			return nil, errHelp
		}
		if len(c.args) != 1 {
			return nil, fmt.Errorf("p0f: want one signature, got %d arguments", len(c.args))
		}
		return bpfgen.P0f(c.opts, c.args[0])
	case "tcpdump":
		if helpAsked(c.args) {
			return nil, errHelp
		}
		return bpfgen.Tcpdump(c.opts, strings.Join(c.args, " "))
	}
	return nil, fmt.Errorf("unknown generator %q", c.gen)
}

func helpAsked(args []string) bool {
	return len(args) == 1 && (args[0] == "-h" || args[0] == "--help")
}
