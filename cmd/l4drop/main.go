// Command l4drop compiles DDoS mitigation rule sets into one XDP program,
// loads it on interfaces with per-location rule switches, samples traffic
// and counts every rule.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usage = `l4drop compiles rule sets into one XDP program and runs it.

Usage:
  l4drop build RULES.yaml -o rules.o [--emit-c]      (clang: $CLANG, clang or clang-N)
  l4drop load rules.o --iface IF [--location L] [--enable NAME]... [--disable NAME]...
                      [--mode native|generic] [--netns NS] [--next PINNED_PROG] [--sample-rate N]
  l4drop unload --iface IF [--netns NS]
  l4drop status --iface IF [--netns NS] [--json] [--interval 1s]
  l4drop samples --iface IF [--netns NS] -w OUT.pcapng|- [--count N] [--rate N]
  l4drop run RULES.yaml|rules.o --iface IF [--location L] [--netns NS] [--dir DIR] [--metrics ADDR]
  l4drop test RULES.yaml -r IN.pcap [--location L] [-v | --json]
  l4drop fingerprint -r ATTACK.pcap [--baseline NORMAL.pcap] [--name PREFIX]   (rules as YAML)

Pins go under DIR/l4drop/IF/ (IF@NS/ with --netns NS), DIR being
--bpffs DIR or /sys/fs/bpf. Prefer "l4drop ... --netns NS" to
"ip netns exec NS l4drop ...": ip netns exec gives its command a private
/sys, and a bpffs mounted there vanishes, with the pins and the attachment,
when the command exits. Inside ip netns exec, l4drop names the namespace
itself (pins in IF@NS/, as with --netns) and pins on the host's bpffs
through /proc/1/root when it can; otherwise it refuses unless --bpffs names
a bpffs mount shared with the host (mount -t bpf bpf /run/l4drop-bpf).

Examples:
  l4drop build l4drop/examples/rules.yaml -o rules.o
  l4drop load rules.o --iface eth0 --location ams
  l4drop status --iface eth0
  l4drop samples --iface eth0 -w - | tcpdump -nr -
  l4drop test l4drop/examples/rules.yaml -r attack.pcap -v
  l4drop run l4drop/examples/rules.yaml --iface eth0 --location ams --dir /var/lib/l4drop
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ue usageError
	switch {
	case err == nil || errors.Is(err, flag.ErrHelp):
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "l4drop: %v\n\n%s", err, usage)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "l4drop %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// cmds are the commands; build.go adds those that need clang, unless
// built with -tags loadonly.
var cmds = map[string]func(context.Context, []string, io.Writer, io.Writer) error{
	"load": cmdLoad, "unload": cmdUnload, "status": cmdStatus, "samples": cmdSamples, "run": cmdRun,
}

// buildRules builds a rules file; build.go sets it.
var buildRules = func(path string) ([]byte, error) {
	return nil, fmt.Errorf("%s: this l4drop is load-only (no clang): give a built rules.o", path)
}

// object returns the built rule set in path: an ELF as it is, a rules
// file built.
func object(path string) ([]byte, error) {
	if strings.HasSuffix(path, ".o") {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read rule set: %w", err)
		}
		return b, nil
	}
	return buildRules(path)
}

type usageError string

func (e usageError) Error() string { return string(e) }

// run runs the command args names.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) < 1 {
			return usageError("no command")
		}
		return nil
	}
	fn, ok := cmds[args[0]]
	if !ok {
		return usageError(fmt.Sprintf("unknown command %q", args[0]))
	}
	return fn(ctx, args[1:], stdout, stderr)
}

// list is a repeatable flag; commas separate values too.
type list []string

func (l *list) String() string { return strings.Join(*l, ",") }
func (l *list) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// newFlags returns a flag set for a command whose errors go to stderr.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses flags and positional arguments in any order, and checks the
// number of positional arguments.
func parse(fs *flag.FlagSet, args []string, positional int, example string) ([]string, error) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: l4drop %s\n\nExample:\n  %s\n\nFlags:\n", fs.Name(), example)
		fs.PrintDefaults()
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != positional {
		fs.Usage()
		return nil, fmt.Errorf("want %d argument(s), got %d", positional, len(pos))
	}
	return pos, nil
}
