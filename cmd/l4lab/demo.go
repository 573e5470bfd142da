package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/l4drop/l4drop/lab/demo"
)

const demoUsage = `Usage: l4lab demo [-short]

Builds a lab (an "internet" and a "server" network namespace joined by a
veth pair), sends legitimate DNS queries to the server, floods it with DNS
queries for random names under attack.example and TCP SYNs to port 80,
shows the server suffering, builds rules with bpfgen and a tcpdump
expression, loads them with l4drop, shows the rules' counters climbing while
every legitimate query still arrives, captures dropped packets with xdpcap,
shows a few samples; then runs the daemon with --auto, floods the server
with an attack no rule knows, and shows a rule appear by itself, the users
still served, and the rule expire once the attack stops; and removes
everything. Needs root and the l4drop,
xdpcap and bpfgen commands (next to l4lab, as 'make build' puts them, or on
PATH).

-short runs a quick version for CI and checks its claims: attack dropped,
legitimate traffic delivered, xdpcap captured drops, an auto rule within
2 s that expires. It exits 1 if one fails.

Examples:
  make demo
  l4lab demo -short

Flags:
`

func demoCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, demoUsage); fs.PrintDefaults() }
	short := fs.Bool("short", false, "quick run for CI; assert the key claims")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	bins := map[string]string{}
	for _, name := range demo.Commands {
		p, err := findBinary(name)
		if err != nil {
			return err
		}
		bins[name] = p
	}
	f, ok := stdout.(*os.File)
	return demo.Run(stdout, demo.Options{Short: *short, Bins: bins, Bold: ok && isTerminal(f)})
}

// findBinary looks next to this executable first (make build puts all
// commands in bin/), then on PATH.
func findBinary(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found next to l4lab or on PATH (run 'make build')", name)
	}
	return p, nil
}
