package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/l4drop/l4drop/lab"
)

// Tools are the project's commands the benchmark drives, as an operator
// would.
type Tools struct {
	L4Drop, XDPcap, BPFgen string
	// BuildTimeout bounds each l4drop build (0: none).
	BuildTimeout time.Duration
	// DNSRules says l4drop builds `dns:` rules (it has bpfgen's generator);
	// otherwise rules are written as equivalent tcpdump expressions.
	DNSRules bool
}

// attackRule is the pattern the flood matches; the other rules are for
// zones the flood never touches.
const attackPattern = "*.attack.example"

// RuleSet returns an l4drop rule set of n rules whose last one matches the
// flood (DNS queries for random names under attack.example) and the others
// DNS queries under other zones.
func (t Tools) RuleSet(n int) string {
	var b strings.Builder
	b.WriteString("sample_rate: 0\nrules:\n")
	for i := 1; i <= n; i++ {
		if i == n {
			if t.DNSRules {
				fmt.Fprintf(&b, "  - name: attack\n    dns: [%q]\n", attackPattern)
			} else {
				// The label after the random one: 6 "attack".
				fmt.Fprintf(&b, "  - name: attack\n    expr: \"udp dst port 53 and udp[20] = 12 and udp[33:4] = 0x06617474 and udp[37:4] = 0x61636b07\"\n")
			}
			continue
		}
		zone := fmt.Sprintf("zone%04d", i)
		if t.DNSRules {
			fmt.Fprintf(&b, "  - name: %s\n    dns: [\"*.%s.example\"]\n", zone, zone)
		} else {
			fmt.Fprintf(&b, "  - name: %s\n    expr: \"udp dst port 53 and udp[20] = 12 and udp[33:4] = 0x087a6f6e and udp[37:4] = 0x65%02x%02x%02x and udp[41] = 0x%02x\"\n",
				zone, zone[4], zone[5], zone[6], zone[7])
		}
	}
	return b.String()
}

// AttackBytecode is the flood's rule as cBPF bytecode, for iptables.
func (t Tools) AttackBytecode() (string, error) {
	if t.DNSRules && t.BPFgen != "" {
		out, err := exec.Command(t.BPFgen, "dns", "--", attackPattern).Output()
		if err != nil {
			return "", fmt.Errorf("bpfgen dns: %w", err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	return RawBytecode("udp dst port 53 and udp[20] = 12 and udp[33:4] = 0x06617474 and udp[37:4] = 0x61636b07")
}

// ErrTimeout is returned by Build when l4drop build took longer than the
// tools' BuildTimeout.
var ErrTimeout = errors.New("timed out")

// Build builds an n-rule set (RuleSet) into dir and returns the object's
// path and the time l4drop build took.
func (t Tools) Build(ctx context.Context, dir string, n int) (string, time.Duration, error) {
	return t.BuildRules(ctx, dir, fmt.Sprintf("rules-%d", n), t.RuleSet(n))
}

// PortRulePort is the port of PortRule, the flood's destination port.
const PortRulePort = 53

// PortRule is xdp-filter's port rule (`xdp-filter port 53 -p udp -m dst`)
// as an L4Drop rule: a tcpdump expression.
const PortRule = "udp dst port 53"

// PortRuleSet is a rule set of PortRule alone: the flood and the
// legitimate queries both match it, as both match xdp-filter's rule.
func PortRuleSet() string {
	return fmt.Sprintf("sample_rate: 0\nrules:\n  - name: udp-53\n    expr: %q\n", PortRule)
}

// BuildRules builds the rule set yml into dir as NAME.o and returns the
// object's path and the time l4drop build took.
func (t Tools) BuildRules(ctx context.Context, dir, name, yml string) (string, time.Duration, error) {
	src := filepath.Join(dir, name+".yaml")
	obj := filepath.Join(dir, name+".o")
	if err := os.WriteFile(src, []byte(yml), 0o644); err != nil {
		return "", 0, err
	}
	if t.BuildTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.BuildTimeout)
		defer cancel()
	}
	start := time.Now()
	if err := runCmdContext(ctx, t.L4Drop, "build", src, "-o", obj); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "", 0, fmt.Errorf("l4drop build %s: %w after %s", name, ErrTimeout, t.BuildTimeout)
		}
		return "", 0, err
	}
	return obj, time.Since(start), nil
}

// Load loads obj on the lab's server interface and returns how long
// l4drop load took and how to unload it.
func (t Tools) Load(l *lab.Lab, obj string) (time.Duration, func(), error) {
	flags := []string{"--iface", l.ServerIf, "--netns", l.Server.Name}
	start := time.Now()
	if err := runCmd(t.L4Drop, append([]string{"load", obj}, flags...)...); err != nil {
		return 0, nil, err
	}
	d := time.Since(start)
	return d, func() { runCmd(t.L4Drop, append([]string{"unload"}, flags...)...) }, nil
}

// DropFilter is a drop-rate row of the DNS series: an n-rule set
// (RuleSet) built beforehand into obj.
func (t Tools) DropFilter(n int, obj string) Filter {
	name := fmt.Sprintf("L4Drop, %d DNS rules (flood matches the last)", n)
	if n == 1 {
		name = "L4Drop, 1 DNS rule"
	}
	if !t.DNSRules {
		name = strings.Replace(name, "DNS rule", "DNS-name rule", 1)
	}
	return Filter{Name: name, Kind: KindL4Drop, Rules: n, Setup: t.loader(obj)}
}

// PortFilter is the drop-rate row to compare with xdp-filter's port rule:
// PortRuleSet built beforehand into obj.
func (t Tools) PortFilter(obj string) Filter {
	return Filter{Name: "L4Drop, 1 port rule: " + PortRule, Kind: KindL4DropPort, Setup: t.loader(obj)}
}

func (t Tools) loader(obj string) func(l *lab.Lab) (func(), error) {
	return func(l *lab.Lab) (func(), error) {
		_, unload, err := t.Load(l, obj)
		return unload, err
	}
}

// HasDNSRules reports whether l4drop builds `dns:` rules.
func (t Tools) HasDNSRules(dir string) bool {
	probe := Tools{L4Drop: t.L4Drop, DNSRules: true}
	_, _, err := probe.Build(context.Background(), dir, 1)
	return err == nil
}

func runCmd(name string, args ...string) error {
	return runCmdContext(context.Background(), name, args...)
}

func runCmdContext(ctx context.Context, name string, args ...string) error {
	var stderr bytes.Buffer
	c := exec.CommandContext(ctx, name, args...)
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// MeasureLoad loads obj in a fresh lab and returns how long l4drop load took.
func MeasureLoad(t Tools, obj string) (time.Duration, error) {
	l, err := lab.New()
	if err != nil {
		return 0, err
	}
	defer l.Close()
	d, unload, err := t.Load(l, obj)
	if err != nil {
		return 0, err
	}
	unload()
	return d, nil
}
