// Command l4lab runs L4Drop's lab: a traffic generator, a self-made network
// (two namespaces joined by a veth pair), the demo and the benchmarks.
//
//	l4lab gen [flags] [TEMPLATE...]   send templated traffic
//	l4lab demo [-short]               mitigate a flood, end to end
//	l4lab scenario NAME [flags]       an attack scenario against a mitigation, measured
//	l4lab bench [flags]               measure L4Drop, xdpcap and cbpfc against their peers
//	l4lab synflood [flags]            SYN flood and real clients, kernel alone and behind action syncookie
//	l4lab clean                       remove labs left by killed runs
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/l4drop/l4drop/lab"
)

const usage = `l4lab: L4Drop's lab. Needs root.

Usage:
  l4lab gen [flags] [TEMPLATE...]   send templated traffic into a lab (or out of -iface)
  l4lab demo [-short]               mitigate a DNS and SYN flood with L4Drop, end to end
  l4lab scenario NAME [flags]       run an attack scenario against auto rules, a rules file or nothing
  l4lab bench [flags]               measure L4Drop, xdpcap and cbpfc against their peers
  l4lab synflood [flags]            spoofed SYN flood and real clients, kernel alone and behind action syncookie
  l4lab clean                       remove labs that killed runs left behind

Examples:
  l4lab gen -d 5s 'dns,name=*.attack.example,weight=95' 'dns,name=www.example.org,weight=5'
  l4lab gen -netns NS -iface veth0 -n 1000000 -rate 100000 'syn,port=80,v6'
  l4lab demo
  l4lab scenario dns-random-subdomain --json
  l4lab bench -o docs/benchmarks.md

Run 'l4lab COMMAND -h' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "gen":
		err = genCmd(args[1:], stdout, stderr)
	case "demo":
		err = demoCmd(args[1:], stdout, stderr)
	case "scenario":
		err = scenarioCmd(args[1:], stdout, stderr)
	case "bench":
		err = benchCmd(args[1:], stdout, stderr)
	case "synflood":
		err = synfloodCmd(args[1:], stdout, stderr)
	case "clean":
		var removed []string
		removed, err = lab.Clean()
		for _, n := range removed {
			what := "namespace"
			if filepath.IsAbs(n) {
				what = "pin directory"
			}
			fmt.Fprintf(stdout, "removed %s %s\n", what, n)
		}
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "l4lab: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, lab.ErrInterrupted):
		fmt.Fprintln(stderr, "l4lab: interrupted; lab removed")
		return 130
	case err != nil:
		fmt.Fprintf(stderr, "l4lab %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// errUsage is returned after a flag error, which flag has printed already.
var errUsage = errors.New("usage")

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
