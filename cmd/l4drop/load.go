package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/l4drop/l4drop/l4drop"
)

type ifaceFlags struct {
	iface, netns, root *string
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
		return "", fmt.Errorf("--bpffs: %w", err)
	}
	return l4drop.Dir(root, *f.iface, ns), nil
}

// open opens the rule set loaded on the interface the flags name.
func (f ifaceFlags) open() (*l4drop.Handle, error) {
	dir, err := f.dir()
	if err != nil {
		return nil, err
	}
	return l4drop.Open(dir)
}

// rateFlag is a sample rate: one in N, 0 off, unset by default.
type rateFlag struct {
	set  bool
	rate uint32
}

func (r *rateFlag) String() string { return "" }
func (r *rateFlag) Set(v string) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > math.MaxUint32 {
		return fmt.Errorf("%q: want 0 (off) to %d", v, uint32(math.MaxUint32))
	}
	r.set, r.rate = true, uint32(n)
	return nil
}

// loadOptions adds the flags that say how to load, and returns a function
// that builds the options once the flags are parsed.
func loadOptions(fs *flag.FlagSet) func() (l4drop.LoadOptions, error) {
	ifl := addIface(fs)
	loc := fs.String("location", "", "location: switches on the rules listing it")
	var enable, disable list
	fs.Var(&enable, "enable", "switch a rule on by name (repeatable)")
	fs.Var(&disable, "disable", "switch a rule off by name (repeatable)")
	mode := fs.String("mode", "", "native or generic (default: what the driver supports)")
	next := fs.String("next", "", "pinned XDP program to hand passed packets to")
	var rate rateFlag
	fs.Var(&rate, "sample-rate", "override the rule set's sample rate (one in N; 0 off)")
	return func() (l4drop.LoadOptions, error) {
		if *ifl.iface == "" {
			return l4drop.LoadOptions{}, errors.New("--iface is required")
		}
		opts := l4drop.LoadOptions{
			Iface: *ifl.iface, Netns: *ifl.netns, Root: *ifl.root, Location: *loc,
			Enable: enable, Disable: disable, Mode: *mode, Next: *next,
		}
		if rate.set {
			opts.SampleRate = &rate.rate
		}
		return opts, nil
	}
}

func cmdLoad(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("load rules.o --iface IF [flags]", stderr)
	options := loadOptions(fs)
	pos, err := parse(fs, args, 1, "l4drop load rules.o --iface eth0 --location ams --disable syn-flood-80")
	if err != nil {
		return err
	}
	opts, err := options()
	if err != nil {
		return err
	}
	// An ELF only: a rules file is for build, test and run.
	obj, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("read rule set: %w", err)
	}
	l, err := l4drop.Load(obj, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
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
	fmt.Fprintf(stdout, "%s %s: %d of %d rules on, %d program(s), pinned in %s\n", verb, opts.Iface, on, len(l.State.Enabled), len(l.Programs), l.Dir)
	if len(l.State.Sysctls) > 0 {
		var was []string
		for name, v := range l.State.Sysctls {
			was = append(was, name+"="+v)
		}
		slices.Sort(was)
		fmt.Fprintf(stdout, "syncookie: set net.ipv4.tcp_syncookies=2 and net.ipv4.tcp_timestamps=2 in the interface's namespace; unload puts back %s\n",
			strings.Join(was, " "))
	}
	return nil
}

func cmdUnload(_ context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("unload --iface IF", stderr)
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
