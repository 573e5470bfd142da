package bpfgen

import (
	"errors"
	"fmt"
	"strings"

	"github.com/l4drop/l4drop/cbpf"
)

// Generators lists the generators Generate runs, by the names the
// original bpfgen's command line gives them.
var Generators = []string{"dns", "dns_validate", "suffix", "p0f", "tcpdump"}

// ErrHelp is returned by Generate when the arguments ask for the
// generator's help (-h or --help), which GeneratorHelp returns.
var ErrHelp = errors.New("help")

// GeneratorHelp returns the usage of generator name, its flags and
// argument syntax, or "" for a name that is no generator.
func GeneratorHelp(name string) string { return generatorHelp[name] }

// generatorHelp holds each generator's help, by the name bpfgen's command
// line gives it.
var generatorHelp = map[string]string{
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

// Generate runs generator name (one of Generators) on its command-line
// arguments: its flags and arguments, in the original bpfgen's syntax
// (bpfgen OPTIONS GENERATOR -- ARGS), such as
//
//	Generate(o, "dns", []string{"-i", "*.example.com"})
//
// Errors name the generator and the argument it refuses.
func Generate(o Options, name string, args []string) (*Program, error) {
	switch name {
	case "dns":
		var d DNSOptions
		var patterns []string
		for i, a := range args {
			switch a {
			case "-i", "--ignorecase":
				d.CaseInsensitive = true
			case "--no-l4-check":
				d.NoL4Check = true
			case "-h", "--help":
				return nil, ErrHelp
			case "--":
				patterns = append(patterns, args[i+1:]...)
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
		return DNS(o, d, patterns...)
	case "dns_validate":
		var v DNSValidateOptions
		for _, a := range args {
			switch a {
			case "-s", "--strict":
				v.Strict = true
			case "--no-l4-check":
				v.NoL4Check = true
			case "-h", "--help":
				return nil, ErrHelp
			default:
				return nil, fmt.Errorf("dns_validate: unknown argument %s", cbpf.QuoteExpr(a))
			}
		}
		return DNSValidate(o, v)
	case "suffix":
		if helpAsked(args) {
			return nil, ErrHelp
		}
		return Suffix(o, args...)
	case "p0f":
		if helpAsked(args) {
			return nil, ErrHelp
		}
		if len(args) != 1 {
			return nil, fmt.Errorf("p0f: want one signature, got %d arguments", len(args))
		}
		return P0f(o, args[0])
	case "tcpdump":
		if helpAsked(args) {
			return nil, ErrHelp
		}
		return Tcpdump(o, strings.Join(args, " "))
	}
	return nil, fmt.Errorf("unknown generator %q", name)
}

func helpAsked(args []string) bool {
	return len(args) == 1 && (args[0] == "-h" || args[0] == "--help")
}
