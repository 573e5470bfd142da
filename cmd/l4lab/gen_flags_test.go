package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestGenBadFlags runs the built `l4lab gen` on nonsense flags. Each must be
// refused at once, before a lab exists: a non-zero exit status, a message
// naming the flag, no panic. (-d -2s used to send forever.) RunCommand
// interrupts, and fails, a run that goes on.
func TestGenBadFlags(t *testing.T) {
	bin := filepath.Join(fixture.BuildCommands(t, "./cmd/l4lab"), "l4lab")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"negative duration", []string{"-d", "-2s"}, "-d -2s: want a positive duration"},
		{"negative duration with count", []string{"-d", "-1ns", "-n", "10"}, "-d -1ns"},
		{"bad duration", []string{"-d", "5"}, "-d"},
		{"negative count", []string{"-n", "-5"}, `invalid value "-5" for flag -n`},
		{"negative rate", []string{"-rate", "-100"}, "-rate -100: want packets per second"},
		{"NaN rate", []string{"-rate", "NaN"}, "-rate NaN"},
		{"infinite rate", []string{"-rate", "+Inf"}, "-rate +Inf"},
		{"zero batch", []string{"-batch", "0"}, "-batch 0: want 1 to 256"},
		{"huge batch", []string{"-batch", "4294967296"}, "-batch 4294967296: want 1 to 256"},
		{"negative batch", []string{"-batch", "-1"}, `invalid value "-1" for flag -batch`},
		{"cpu below -1", []string{"-cpu", "-2"}, "-cpu -2"},
		{"cpu not there", []string{"-cpu", "4096"}, "-cpu 4096: not a CPU this process may run on"},
		{"netns without iface", []string{"-netns", "x"}, "-netns needs -iface"},
		{"replay and templates", []string{"-r", "x.pcap", "udp,port=9"}, "-r and templates exclude each other"},
		{"replay missing", []string{"-r", "/nonexistent.pcap"}, "/nonexistent.pcap"},
		{"bad template", []string{"icmp"}, "unknown kind"},
		{"unknown flag", []string{"-x"}, "-x"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := fixture.RunCommand(t, bin, append([]string{"gen"}, tt.args...)...)
			r.WantError(t, tt.want)
			if strings.Contains(r.Stderr, "sent ") {
				t.Errorf("sent traffic before refusing the flags:\n%s", r.Stderr)
			}
		})
	}
}
