package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/l4drop/l4drop/fingerprint"
	"github.com/l4drop/l4drop/l4drop"
)

func init() { cmds["fingerprint"] = cmdFingerprint }

var ruleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// cmdFingerprint is `l4drop fingerprint`: the offline analyst's tool, from
// a capture of an attack to a rules file.
func cmdFingerprint(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fingerprint -r ATTACK.pcap [--baseline NORMAL.pcap]", stderr)
	in := fs.String("r", "", "capture of the attack (pcap or pcapng, Ethernet or raw IP); some legitimate packets in it are fine")
	base := fs.String("baseline", "", "capture of normal traffic: the rules match none of it")
	name := fs.String("name", "fingerprint", "rule name prefix")
	coverage := fs.Float64("coverage", 0.99, "share of a vector's packets a rule must match")
	minPackets := fs.Int("min-packets", 20, "fewest packets a rule is made from")
	if _, err := parse(fs, args, 0, "l4drop fingerprint -r attack.pcap --baseline normal.pcap > rules.yaml"); err != nil {
		return err
	}
	switch {
	case *in == "":
		return errors.New("-r ATTACK.pcap is required")
	case !(*coverage > 0 && *coverage <= 1):
		return fmt.Errorf("--coverage %v: want more than 0, at most 1", *coverage)
	case *minPackets < 1:
		return fmt.Errorf("--min-packets %d: want 1 or more", *minPackets)
	case !ruleName.MatchString(*name):
		return fmt.Errorf("--name %q: want letters, digits, '.', '_' or '-'", *name)
	}
	frames, err := l4drop.ReadFrames(*in)
	if err != nil {
		return err
	}
	attack := fingerprint.FromFrames(frames)
	var baseline []fingerprint.Packet
	if *base != "" {
		frames, err := l4drop.ReadFrames(*base)
		if err != nil {
			return err
		}
		baseline = fingerprint.FromFrames(frames)
	}
	rules, err := fingerprint.Fingerprint(attack, baseline, fingerprint.Options{Coverage: *coverage, MinSamples: *minPackets})
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	_, err = stdout.Write(fingerprint.RulesFile(rules, *name, len(attack), len(baseline)))
	return err
}
