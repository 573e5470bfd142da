package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
)

func runBpfgen(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCommand(t *testing.T) {
	dns := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53, fixture.DNSQuery("WWW.Example.com", 1))
	dns6 := fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 40000, 53, fixture.DNSQuery("example.com", 1))
	syn := fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 80)
	tests := []struct {
		args  []string
		pkt   []byte // from the IP header, unless the rule has -o 14
		match bool
	}{
		{[]string{"dns", "--", "-i", "*.example.com"}, dns[14:], true},
		{[]string{"dns", "-i", "--", "*.example.com"}, dns[14:], true}, // generator flag before --
		{[]string{"dns", "--", "*.example.com"}, dns[14:], false},
		{[]string{"dns", "--", "-i", "example.com", "*.example.com"}, dns[14:], true},
		{[]string{"-6", "dns", "--", "example.com"}, dns6[14:], true},
		{[]string{"-o", "14", "dns", "--", "-i", "www.example.com"}, dns, true},
		{[]string{"-o14", "dns", "--", "-i", "www.example.com"}, dns, true},
		{[]string{"-n", "dns", "--", "-i", "www.example.com"}, dns[14:], false},
		{[]string{"dns", "--", "--no-l4-check", "-i", "www.example.com"}, dns[14:], true},
		{[]string{"dns_validate"}, dns[14:], false},
		{[]string{"dns_validate", "--", "--strict"}, dns[14:], true}, // RD
		{[]string{"suffix", "--", "00 01 00 01"}, dns[14:], true},    // qtype A, class IN
		{[]string{"suffix", "--", "00", "1c", "00", "01"}, dns[14:], false},
		{[]string{"p0f", "--", "*:64:0:*:*,*:mss::0"}, syn[14:], true},
		{[]string{"tcpdump", "--", "udp", "and", "dst", "port", "53"}, dns[14:], true},
		{[]string{"-o", "14", "tcpdump", "--", "tcp[tcpflags] == tcp-syn"}, syn, true},
	}
	for _, tt := range tests {
		code, out, errOut := runBpfgen(tt.args...)
		if code != 0 {
			t.Errorf("bpfgen %q: exit %d: %s", tt.args, code, errOut)
			continue
		}
		prog, err := cbpf.Parse(out)
		if err != nil {
			t.Errorf("bpfgen %q: output %q does not parse: %v", tt.args, out, err)
			continue
		}
		if got := cbpf.Interpret(prog, tt.pkt, len(tt.pkt)) != 0; got != tt.match {
			t.Errorf("bpfgen %q: match %v, want %v", tt.args, got, tt.match)
		}
		// -s prints the listing of the same program.
		code, listing, _ := runBpfgen(append([]string{"-s"}, tt.args...)...)
		if code != 0 || !strings.Contains(listing, "ret") || cbpf.IsBytecode(listing) {
			t.Errorf("bpfgen -s %q: exit %d, listing:\n%s", tt.args, code, listing)
		}
	}
}

func TestCommandErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "no generator"},
		{[]string{"dnss", "--", "x"}, `unknown generator "dnss"`},
		{[]string{"-x", "dns", "--", "x"}, `unknown option "-x"`},
		{[]string{"-o", "x", "dns", "--", "x"}, `offset "x"`},
		{[]string{"-o"}, "needs a number"},
		{[]string{"dns"}, "no pattern"},
		{[]string{"dns", "--", ""}, `dns pattern "": empty pattern`},
		{[]string{"dns", "--", "a..b"}, `dns pattern "a..b": empty label`},
		{[]string{"dns", "--", strings.Repeat("a", 64)}, "more than 63"},
		{[]string{"dns", "--", "a%g1"}, "escape"},
		{[]string{"dns", "--", "-q", "x"}, `unknown flag "-q"`},
		{[]string{"dns_validate", "--", "x"}, `unknown argument "x"`},
		{[]string{"suffix", "--", "0g"}, `"0g"`},
		{[]string{"suffix"}, "no hex"},
		{[]string{"p0f", "--", "4:64:0"}, `p0f signature "4:64:0"`},
		{[]string{"p0f", "--", "a", "b"}, "one signature"},
		{[]string{"tcpdump", "--", "udp", "port", "x53"}, "unknown port"},
		{[]string{"-o", "3", "tcpdump", "--", "udp"}, "offset 3"},
	}
	for _, tt := range tests {
		code, out, errOut := runBpfgen(tt.args...)
		if code != 1 || out != "" || !strings.Contains(errOut, tt.want) || !strings.HasPrefix(errOut, "bpfgen: ") {
			t.Errorf("bpfgen %q: exit %d, stdout %q, stderr %q; want exit 1 and %q", tt.args, code, out, errOut, tt.want)
		}
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runBpfgen("-h")
	if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "bpfgen dns -- -i '*.example.com'") {
		t.Errorf("bpfgen -h: exit %d:\n%s", code, out)
	}
	for _, gen := range []string{"dns", "dns_validate", "suffix", "p0f", "tcpdump"} {
		code, out, _ := runBpfgen(gen, "--", "--help")
		if code != 0 || !strings.Contains(out, "Usage: bpfgen [OPTIONS] "+gen+" --") {
			t.Errorf("bpfgen %s -- --help: exit %d:\n%s", gen, code, out)
		}
	}
	// Every example of the help works.
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "bpfgen ") {
			continue
		}
		args := splitShell(t, strings.SplitN(line, "  ", 2)[0])
		if code, _, errOut := runBpfgen(args[1:]...); code != 0 {
			t.Errorf("help example %q: exit %d: %s", line, code, errOut)
		}
	}
}

// splitShell splits a command line with single quotes.
func splitShell(t *testing.T, s string) []string {
	t.Helper()
	var args []string
	var cur strings.Builder
	quoted, inArg := false, false
	for _, c := range s {
		switch {
		case c == '\'':
			quoted, inArg = !quoted, true
		case c == ' ' && !quoted:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

// TestBadInput runs the built command on bad options, patterns and
// signatures: each must end with status 1, nothing on stdout and a message
// naming what is wrong, never a panic.
func TestBadInput(t *testing.T) {
	bin := filepath.Join(fixture.BuildCommands(t, "./cmd/bpfgen"), "bpfgen")
	// 1 MB in arguments of 100 kB: the kernel takes no longer one.
	huge := strings.Repeat("a", 100000)
	hugeArgs := func(first ...string) []string {
		for range 10 {
			first = append(first, huge)
		}
		return first
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no generator", nil, "no generator given"},
		{"unknown option", []string{"-x", "dns", "--", "a.com"}, `unknown option "-x"`},
		{"unknown generator", []string{"dnss", "--", "a.com"}, `unknown generator "dnss"`},
		{"offset without number", []string{"dns", "-o"}, "-o needs a number"},
		{"offset not a number", []string{"-o", "x", "dns", "--", "a.com"}, `offset "x"`},
		{"negative offset", []string{"-o", "-1", "dns", "--", "a.com"}, `offset "-1"`},
		{"offset too big", []string{"--offset=70000", "dns", "--", "a.com"}, `offset "70000"`},
		{"tcpdump offset", []string{"-o", "3", "tcpdump", "--", "udp"}, "offset 3"},
		{"dns flag", []string{"dns", "--", "-q", "a.com"}, `dns: unknown flag "-q"`},
		{"dns no pattern", []string{"dns"}, "no pattern"},
		{"dns x-y", []string{"dns", "--", "*{x-y}.example.com"}, `dns pattern "*{x-y}.example.com": label "*{x-y}": want *{min-max}`},
		{"dns 5-2", []string{"dns", "--", "*{5-2}"}, `dns pattern "*{5-2}"`},
		{"dns open brace", []string{"dns", "--", "*{3"}, `dns pattern "*{3"`},
		{"dns negative", []string{"dns", "--", "*{-1-2}"}, `dns pattern "*{-1-2}"`},
		{"dns empty label", []string{"dns", "--", "a..com"}, "empty label"},
		{"dns long label", []string{"dns", "--", strings.Repeat("x", 64) + ".com"}, "more than 63"},
		{"dns long name", []string{"dns", "--", strings.Repeat(strings.Repeat("x", 63)+".", 4)}, "more than 255"},
		{"dns inner **", []string{"dns", "--", "a.**.com"}, "** only ends a pattern"},
		{"dns huge", hugeArgs("dns", "--"), "more than 63"},
		{"dns_validate argument", []string{"dns_validate", "--", "x"}, `unknown argument "x"`},
		{"suffix odd", []string{"suffix", "--", "abc"}, "odd number of hex digits"},
		{"suffix huge", hugeArgs("suffix", "--"), "(1000000 bytes)"},
		{"p0f IPv6 without -6", []string{"p0f", "--", "6:64:0:*:mss*4,*:mss,sok,ts,nop,ws:flow:*"}, "is for IPv6: give -6"},
		{"p0f IPv4 with -6", []string{"-6", "p0f", "--", "4:64:0:*:*,*:mss::0"}, "is for IPv4, but -6 asks for IPv6"},
		{"p0f fields", []string{"p0f", "--", "4:64:0"}, "want 8 fields"},
		{"p0f two", []string{"p0f", "--", "a", "b"}, "want one signature"},
		{"p0f huge", []string{"p0f", "--", "4:" + huge + ":0:*:*,*:mss::0"}, `ittl "aaaa`},
		{"tcpdump syntax", []string{"tcpdump", "--", "udp", "port", "x53"}, "unknown port"},
		{"tcpdump empty", []string{"tcpdump", "--", " "}, "empty expression"},
		{"tcpdump huge", hugeArgs("tcpdump", "--", "host"), `compile "host aaaa`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := fixture.RunCommand(t, bin, tt.args...)
			r.WantError(t, tt.want)
			if r.Code != 1 || !strings.HasPrefix(r.Stderr, "bpfgen: ") {
				t.Errorf("exit status %d, stderr %q; want 1 and a bpfgen: message", r.Code, fixture.Shorten(r.Stderr))
			}
		})
	}
}
