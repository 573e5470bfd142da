// Command l4drop compiles DDoS mitigation rule sets into one XDP program,
// loads it on interfaces with per-location rule switches, samples traffic
// and counts every rule.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
)

const usage = `l4drop compiles rule sets into one XDP program and runs it.

Usage:
  l4drop build RULES.yaml -o rules.o [--emit-c]      (clang: $CLANG, clang or clang-N)
  l4drop load rules.o --iface IF [--location L] [--enable NAME]... [--disable NAME]...
                      [--mode native|generic] [--netns NS] [--next PINNED_PROG] [--sample-rate N]
  l4drop unload --iface IF [--netns NS]
  l4drop status --iface IF [--netns NS] [--json] [--interval 1s]
  l4drop samples --iface IF [--netns NS] -w OUT.pcapng|- [--count N] [--rate N]
  l4drop run RULES.yaml --iface IF [--location L] [--netns NS] [--dir DIR] [--metrics ADDR]
  l4drop test RULES.yaml -r IN.pcap [--location L] [-v]

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
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Fprint(os.Stderr, usage)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	cmds := map[string]func([]string) error{
		"build": cmdBuild, "load": cmdLoad, "unload": cmdUnload, "status": cmdStatus,
		"samples": cmdSamples, "run": cmdRun, "test": cmdTest,
	}
	fn, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "l4drop: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err := fn(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "l4drop %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
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

func cmdBuild(args []string) error {
	fs := flag.NewFlagSet("build RULES.yaml -o rules.o [--emit-c]", flag.ContinueOnError)
	out := fs.String("o", "", "write the ELF object here")
	emit := fs.Bool("emit-c", false, "print the generated C on stdout")
	budget := fs.Int("max-program-insns", 0, "cBPF instructions per XDP program before splitting (0: default)")
	pos, err := parse(fs, args, 1, "l4drop build rules.yaml -o rules.o")
	if err != nil {
		return err
	}
	if *out == "" && !*emit {
		return errors.New("give -o FILE, --emit-c, or both")
	}
	rs, err := build.LoadRuleSet(pos[0])
	if err != nil {
		return err
	}
	opts := build.BuildOptions{MaxProgramInsns: *budget}
	if !*emit || *out != "" {
		obj, gen, err := build.Build(rs, opts)
		if err != nil {
			return err
		}
		if *emit {
			fmt.Print(gen.C)
		}
		if err := os.WriteFile(*out, obj, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "%s: %d rules in %d program(s), %d bytes\n", *out, len(gen.Meta.Rules), len(gen.Meta.Programs), len(obj))
		return nil
	}
	gen, err := build.Generate(rs, opts)
	if err != nil {
		return err
	}
	fmt.Print(gen.C)
	return nil
}

type ifaceFlags struct {
	iface, netns, root *string
}

// open opens the rule set loaded on the interface the flags name.
func (f ifaceFlags) open() (*l4drop.Handle, error) {
	dir, err := f.dir()
	if err != nil {
		return nil, err
	}
	return l4drop.Open(dir)
}

func addIface(fs *flag.FlagSet) ifaceFlags {
	return ifaceFlags{
		iface: fs.String("iface", "", "interface"),
		netns: fs.String("netns", "", "network namespace of the interface (as in ip netns)"),
		root:  fs.String("bpffs", "", "BPF file system for pins (default /sys/fs/bpf)"),
	}
}

func (f ifaceFlags) dir() (string, error) {
	if *f.iface == "" {
		return "", errors.New("--iface is required")
	}
	root, ns, err := l4drop.Locate(*f.root, *f.netns)
	if err != nil {
		return "", err
	}
	return l4drop.Dir(root, *f.iface, ns), nil
}

func cmdLoad(args []string) error {
	fs := flag.NewFlagSet("load rules.o --iface IF [flags]", flag.ContinueOnError)
	ifl := addIface(fs)
	loc := fs.String("location", "", "location: switches on the rules listing it")
	var enable, disable list
	fs.Var(&enable, "enable", "switch a rule on by name (repeatable)")
	fs.Var(&disable, "disable", "switch a rule off by name (repeatable)")
	mode := fs.String("mode", "", "native or generic (default: what the driver supports)")
	next := fs.String("next", "", "pinned XDP program to hand passed packets to")
	rate := fs.Int64("sample-rate", -1, "override the rule set's sample rate (one in N; 0 off)")
	pos, err := parse(fs, args, 1, "l4drop load rules.o --iface eth0 --location ams --disable syn-flood-80")
	if err != nil {
		return err
	}
	obj, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	if *ifl.iface == "" {
		return errors.New("--iface is required")
	}
	opts := l4drop.LoadOptions{
		Iface: *ifl.iface, Netns: *ifl.netns, Root: *ifl.root, Location: *loc,
		Enable: enable, Disable: disable, Mode: *mode, Next: *next,
	}
	if *rate >= 0 {
		r := uint32(*rate)
		opts.SampleRate = &r
	}
	l, err := l4drop.Load(obj, opts)
	if err != nil {
		return err
	}
	defer l.Close()
	on := 0
	for _, e := range l.State.Enabled {
		if e {
			on++
		}
	}
	verb := "loaded on"
	if l.Replaced {
		verb = "replaced the rule set on"
	}
	fmt.Printf("%s %s: %d of %d rules on, %d program(s), pinned in %s\n", verb, *ifl.iface, on, len(l.State.Enabled), len(l.Programs), l.Dir)
	return nil
}

func cmdUnload(args []string) error {
	fs := flag.NewFlagSet("unload --iface IF", flag.ContinueOnError)
	ifl := addIface(fs)
	if _, err := parse(fs, args, 0, "l4drop unload --iface eth0"); err != nil {
		return err
	}
	dir, err := ifl.dir()
	if err != nil {
		return err
	}
	return l4drop.Unload(dir)
}

func cmdStatus(args []string) error {
	fs := flag.NewFlagSet("status --iface IF [--json]", flag.ContinueOnError)
	ifl := addIface(fs)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	interval := fs.Duration("interval", time.Second, "measure rates over this long (0: no rates)")
	if _, err := parse(fs, args, 0, "l4drop status --iface eth0 --json"); err != nil {
		return err
	}
	h, err := ifl.open()
	if err != nil {
		return err
	}
	defer h.Close()
	st, err := h.Status(*interval)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(os.Stdout, st)
	return nil
}

func printStatus(w io.Writer, st *l4drop.Status) {
	rate := "off"
	if st.SampleRate > 0 {
		rate = fmt.Sprintf("1/%d", st.SampleRate)
	}
	fmt.Fprintf(w, "%s: location %q, %d program(s), loaded %s, sample rate %s, samples %d, lost %d\n",
		st.Iface, st.Location, st.Programs, st.LoadedAt.Format(time.RFC3339), rate, st.Samples, st.Lost)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rule\taction\tenabled\tpackets\tbytes\tpps\tbps\t")
	for _, r := range append(st.Rules, st.Unmatched) {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%.0f\t%.0f\t\n", r.Name, r.Action, r.Enabled, r.Packets, r.Bytes, r.PPS, r.BPS*8)
	}
	tw.Flush()
}

func cmdSamples(args []string) error {
	fs := flag.NewFlagSet("samples --iface IF -w OUT.pcapng|-", flag.ContinueOnError)
	ifl := addIface(fs)
	out := fs.String("w", "", "pcapng output file, - for stdout")
	count := fs.Int("count", 0, "stop after this many samples (0: until interrupted)")
	rate := fs.Int64("rate", -1, "set the sample rate first (one in N; 0 off), without reloading")
	if _, err := parse(fs, args, 0, "l4drop samples --iface eth0 -w - | tcpdump -nr -"); err != nil {
		return err
	}
	h, err := ifl.open()
	if err != nil {
		return err
	}
	defer h.Close()
	if *rate >= 0 {
		if err := h.SetSampleRate(uint32(*rate)); err != nil {
			return err
		}
		if *out == "" {
			fmt.Fprintf(os.Stderr, "sample rate set to 1/%d\n", *rate)
			return nil
		}
	}
	if *out == "" {
		return errors.New("-w FILE or -w - is required")
	}
	return streamSamples(h, *out, *count, *ifl.iface)
}

func cmdTest(args []string) error {
	fs := flag.NewFlagSet("test RULES.yaml -r IN.pcap [--location L] [-v]", flag.ContinueOnError)
	in := fs.String("r", "", "pcap or pcapng capture (Ethernet or raw IP)")
	loc := fs.String("location", "", "location, as for load")
	var enable, disable list
	fs.Var(&enable, "enable", "switch a rule on by name (repeatable)")
	fs.Var(&disable, "disable", "switch a rule off by name (repeatable)")
	verbose := fs.Bool("v", false, "print the verdict for every packet")
	pos, err := parse(fs, args, 1, "l4drop test rules.yaml -r attack.pcap -v")
	if err != nil {
		return err
	}
	if *in == "" {
		return errors.New("-r IN.pcap is required")
	}
	frames, err := l4drop.ReadFrames(*in)
	if err != nil {
		return err
	}
	var obj []byte
	if strings.HasSuffix(pos[0], ".o") {
		obj, err = os.ReadFile(pos[0])
	} else {
		var rs *build.RuleSet
		if rs, err = build.LoadRuleSet(pos[0]); err == nil {
			obj, _, err = build.Build(rs, build.BuildOptions{})
		}
	}
	if err != nil {
		return err
	}
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: *loc, Enable: enable, Disable: disable})
	if err != nil {
		return err
	}
	defer d.Close()
	type tally struct {
		action  string
		packets int
		which   []int
	}
	byRule := map[string]*tally{}
	unseen := 0
	for i, f := range frames {
		v, err := d.Run(f)
		var name string
		switch {
		case errors.Is(err, l4drop.ErrPacketSize):
			// No XDP program ever sees it, so no rule decides it.
			unseen++
			v, name = l4drop.Verdict{Action: "-"}, "(never seen by XDP)"
		case err != nil:
			return fmt.Errorf("%s: packet %d: %w", *in, i+1, err)
		case v.Name == "":
			name = "(no rule)"
		default:
			name = v.Name
		}
		if *verbose {
			fmt.Printf("%d\t%s\t%s\n", i+1, v.Action, name)
		}
		t := byRule[name]
		if t == nil {
			t = &tally{action: v.Action}
			byRule[name] = t
		}
		t.packets++
		t.which = append(t.which, i+1)
	}
	names := make([]string, 0, len(byRule))
	for n := range byRule {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "rule\taction\tpackets\tpacket numbers\n")
	for _, n := range names {
		t := byRule[n]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", n, t.action, t.packets, ranges(t.which))
	}
	tw.Flush()
	if unseen > 0 {
		fmt.Fprintf(os.Stderr, "%d of %d packets are shorter than an Ethernet header or longer than a multi-buffer XDP packet: XDP never sees them\n", unseen, len(frames))
	}
	return nil
}

// ranges prints 1,2,3,5 as 1-3,5.
func ranges(ns []int) string {
	var parts []string
	for i := 0; i < len(ns); {
		j := i
		for j+1 < len(ns) && ns[j+1] == ns[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", ns[i], ns[j]))
		} else {
			parts = append(parts, fmt.Sprint(ns[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
