//go:build !loadonly

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/l4drop/l4drop/l4drop"
)

func cmdTest(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("test RULES.yaml -r IN.pcap [--location L] [-v]", stderr)
	in := fs.String("r", "", "pcap or pcapng capture (Ethernet or raw IP)")
	loc := fs.String("location", "", "location, as for load")
	var enable, disable list
	fs.Var(&enable, "enable", "switch a rule on by name (repeatable)")
	fs.Var(&disable, "disable", "switch a rule off by name (repeatable)")
	verbose := fs.Bool("v", false, "print the verdict for every packet")
	asJSON := fs.Bool("json", false, `print {"packets", "unmatched", "rules": [{"name", "action", "packets"}]} as JSON`)
	pos, err := parse(fs, args, 1, "l4drop test rules.yaml -r attack.pcap -v")
	if err != nil {
		return err
	}
	if *in == "" {
		return errors.New("-r IN.pcap is required")
	}
	if *verbose && *asJSON {
		return errors.New("-v and --json: give one")
	}
	frames, err := l4drop.ReadFrames(*in)
	if err != nil {
		return err
	}
	obj, err := object(pos[0])
	if err != nil {
		return err
	}
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: *loc, Enable: enable, Disable: disable})
	if err != nil {
		return err
	}
	defer d.Close()
	type tally struct {
		name, action string
		which        []int
	}
	byRule := map[string]*tally{}
	unseen, cookies := 0, false
	for i, f := range frames {
		v, err := d.Run(f)
		name := v.Name
		switch {
		case errors.Is(err, l4drop.ErrPacketSize):
			// No XDP program ever sees it, so no rule decides it.
			unseen++
			v, name = l4drop.Verdict{Action: "-"}, "(never seen by XDP)"
		case err != nil:
			return fmt.Errorf("%s: packet %d: %w", *in, i+1, err)
		case name == "":
			name = "(no rule)"
		}
		action := v.Action
		if v.Detail != "" {
			// Why a ratelimit or syncookie rule decided so.
			action += " (" + v.Detail + ")"
			cookies = cookies || strings.HasPrefix(v.Detail, "syncookie_")
		}
		if *verbose {
			mon := ""
			if v.Monitors != "" {
				mon = "\tmonitored by " + v.Monitors
			}
			fmt.Fprintf(stdout, "%d\t%s\t%s%s\n", i+1, action, name, mon)
		}
		key := name + "\x00" + action
		t := byRule[key]
		if t == nil {
			t = &tally{name: name, action: action}
			byRule[key] = t
		}
		t.which = append(t.which, i+1)
	}
	if *asJSON {
		counts := map[string]int{}
		for _, t := range byRule {
			counts[t.name] += len(t.which)
		}
		return printTestJSON(stdout, d.Meta, counts, len(frames), unseen)
	}
	names := make([]string, 0, len(byRule))
	for n := range byRule {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "rule\taction\tpackets\tpacket numbers\n")
	for _, n := range names {
		t := byRule[n]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", t.name, t.action, len(t.which), ranges(t.which))
	}
	tw.Flush()
	if cookies {
		fmt.Fprintf(stderr, "syncookie: an ACK's cookie is checked against this host's secret, so only ACKs answering SYN-ACKs this host made "+
			"in the last two minutes pass (syncookie_ok); connections a server knows (syncookie_known) cannot be seen offline\n")
	}
	if unseen > 0 {
		fmt.Fprintf(stderr, "%d of %d packets are shorter than an Ethernet header or longer than a multi-buffer XDP packet: XDP never sees them\n", unseen, len(frames))
	}
	return nil
}
