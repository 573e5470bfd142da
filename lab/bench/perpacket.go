package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/bpfgen"
	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/splitmix"
	"github.com/l4drop/l4drop/internal/xdprun"
	"github.com/l4drop/l4drop/l4drop"
)

// PacketShapes are the rule shapes of the per-packet rows, each measured
// at 1 and PacketRules rules, then PacketMixed at MixedRules.
var PacketShapes = []string{"dns", "dnswild", "port", "range", "net", "bpf"}

// PacketMixed is the shape name of the mixed row (MixedRuleSet).
const PacketMixed = "mixed"

// PacketPrefixes is the shape name of the block list row: nets of many
// prefix lengths, as a list of an attack's sources has (each length was a
// table of its own until l4drop/build folded them to a few).
const PacketPrefixes = "prefixes"

// prefixLengths are the block list row's prefix lengths, in turns.
var prefixLengths = []int{12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 32}

// prefixRule is rule i of the block list row. The j-th length has first
// octets of its own (from 20+12j, a new one every 16 of its rules) and no
// two of its rules share the first 12 bits, so no prefix holds another's
// address, nor the lab's 198.18.0.0/15, up to maxPrefixRules.
func prefixRule(i int) netip.Prefix {
	j, k := i%len(prefixLengths), i/len(prefixLengths)
	a := uint32(20+12*j+k/16)<<24 | uint32(k%16)<<20 | uint32(splitmix.Mix(uint64(i)))&0xfffff
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), prefixLengths[j]).Masked()
}

// maxPrefixRules is the most rules prefixRule keeps apart: 16 a first
// octet, 12 first octets a length.
const maxPrefixRules = 16 * 12 * 14

// PacketRounds is the rounds of the per-packet rows: the targets
// are of the fastest of 20.
const PacketRounds = 20

// PacketRules is the rule count of the per-packet rows of one shape.
const PacketRules = 1000

// packetShapeNames say what each shape's rules are, for the report.
var packetShapeNames = map[string]string{
	"dns":          "exact DNS names (`dns: [\"hostN.attack.example\"]`)",
	"dnswild":      "DNS wildcards (`dns: [\"*.zoneN.example\"]`)",
	"port":         "ports (`udp dst port N`)",
	"range":        "port ranges (`udp dst portrange N-N+5`)",
	"net":          "hosts, then nets (`src host A`, `src net A/24`)",
	"bpf":          "bytecode (`bpf:`, bpfgen dns of hostN.bytecode.example: three name lengths)",
	PacketMixed:    "mixed shapes (MixedRuleSet, then an exact DNS name)",
	PacketPrefixes: "a block list of nets of 14 prefix lengths (`src net A/L`, L = 12 to 24 and 32 in turns)",
	PacketAuto:     "an auto rule of 8 conditions (`l4drop run --auto`'s shape of a DNS flood's fingerprint), after a port rule neither packet matches",
	PacketFloor:    "for reference, not L4Drop: a port rule written by hand with a per-rule counter and the sampling test (floorC in lab/bench/floor.go)",
	PacketFloorDNS: "for reference, not L4Drop: a DNS wildcard rule (`*." + floorZone + "`) written by hand with a per-rule counter and the sampling test (floorC in lab/bench/floor.go)",
}

// PacketCase is a rule set of one shape and the packets timed through it.
type PacketCase struct {
	Shape string
	Rules int
	// YAML is the rule set, sampling off.
	YAML string
	// SampleRate is the sampling the program runs with (one in it; 0
	// off, as at high rates without --auto or --sflow).
	SampleRate uint32
	// Auto are auto rules deployed in the program's slots, as l4drop run
	// --auto deploys them; with them, Hit is dropped by the first, after
	// the file's rules, which it does not match.
	Auto []l4drop.AutoRule
	// Hit matches the last rule and no other: it runs through every
	// rule before it. Miss, a DNS query for www.example.org from the lab's
	// client, matches none: the cost of legitimate traffic.
	Hit, Miss []byte
}

// Name names the case in the report.
func (c PacketCase) Name() string {
	what := packetShapeNames[c.Shape]
	if what == "" {
		what = c.Shape
	}
	if c.SampleRate > 0 {
		what += fmt.Sprintf(", sampling one packet in %d", c.SampleRate)
	}
	if len(c.Auto) > 0 || c.Shape == PacketFloor || c.Shape == PacketFloorDNS {
		return what // its rule count says nothing
	}
	if c.Rules == 1 {
		return what + ": 1 rule"
	}
	return fmt.Sprintf("%s: %s rules", what, thousands(c.Rules))
}

// thousands writes n with commas between groups of three digits.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// legitPacket is every case's miss.
func legitPacket() []byte {
	return fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53, fixture.DNSQuery("www.example.org", 1))
}

func dnsPacket(name string) []byte {
	return fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53, fixture.DNSQuery(name, 1))
}

// netAddr is the i-th address of the hosts-and-nets shape, in
// 100.64.0.0/10, which the lab's addresses are not in.
func netAddr(i, last int) string {
	return fmt.Sprintf("100.%d.%d.%d", 64+i>>8&0x3f, i&0xff, last)
}

// NewPacketCase returns n rules of shape (one of PacketShapes,
// PacketPrefixes or PacketMixed) and their packets.
func NewPacketCase(shape string, n int) (PacketCase, error) {
	if n < 1 || shape == PacketPrefixes && n > maxPrefixRules {
		return PacketCase{}, fmt.Errorf("per-packet case %s: %d rules", shape, n)
	}
	c := PacketCase{Shape: shape, Rules: n, Miss: legitPacket()}
	var b strings.Builder
	b.WriteString("sample_rate: 0\nrules:\n")
	if shape == PacketMixed {
		// MixedRuleSet's rules but the last, which is an exact name no
		// other rule matches: a packet for it runs through all of them.
		b.Reset()
		if n > 1 {
			b.WriteString(MixedRuleSet(n-1, 1))
		} else {
			b.WriteString("sample_rate: 0\nrules:\n")
		}
		name := fmt.Sprintf("last%d.attack.example", n-1)
		fmt.Fprintf(&b, "  - name: last\n    dns: [%q]\n", name)
		c.YAML, c.Hit = b.String(), dnsPacket(name)
		return c, nil
	}
	for i := range n {
		switch shape {
		case "dns":
			fmt.Fprintf(&b, "  - name: dns-%d\n    dns: [\"host%d.attack.example\"]\n", i, i)
		case "dnswild":
			fmt.Fprintf(&b, "  - name: zone-%d\n    dns: [\"*.zone%04d.example\"]\n", i, i)
		case "port":
			fmt.Fprintf(&b, "  - name: port-%d\n    expr: \"udp dst port %d\"\n", i, 1000+i)
		case "range":
			fmt.Fprintf(&b, "  - name: range-%d\n    expr: \"udp dst portrange %d-%d\"\n", i, 1000+7*i, 1000+7*i+5)
		case "net":
			// Hosts in the first half, /24 nets in the second: one run
			// of each shape, the packet matching the last net.
			if n > 1 && i < n/2 {
				fmt.Fprintf(&b, "  - name: host-%d\n    expr: \"src host %s\"\n", i, netAddr(i, 1))
			} else {
				fmt.Fprintf(&b, "  - name: net-%d\n    expr: \"src net %s/24\"\n", i, netAddr(i, 0))
			}
		case PacketPrefixes:
			fmt.Fprintf(&b, "  - name: prefix-%d\n    expr: \"src net %s\"\n", i, prefixRule(i))
		case "bpf":
			p, err := bpfgen.Generate(bpfgen.Options{}, "dns", []string{fmt.Sprintf("host%d.bytecode.example", i)})
			if err != nil {
				return c, fmt.Errorf("per-packet case bpf: %w", err)
			}
			text, err := cbpf.Format(p.Insns)
			if err != nil {
				return c, fmt.Errorf("per-packet case bpf: %w", err)
			}
			fmt.Fprintf(&b, "  - name: bpf-%d\n    bpf: %q\n", i, text)
		default:
			return c, fmt.Errorf("per-packet case: unknown shape %q", shape)
		}
	}
	c.YAML = b.String()
	last := n - 1
	switch shape {
	case "dns":
		c.Hit = dnsPacket(fmt.Sprintf("host%d.attack.example", last))
	case "dnswild":
		c.Hit = dnsPacket(fmt.Sprintf("x7f3k2.zone%04d.example", last))
	case "port":
		c.Hit = fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, uint16(1000+last), make([]byte, 18))
	case "range":
		c.Hit = fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, uint16(1000+7*last+3), make([]byte, 18))
	case "net":
		c.Hit = fixture.UDP4(netAddr(last, 77), fixture.ServerIPv4, 40000, 53, fixture.DNSQuery("www.example.org", 1))
	case "bpf":
		c.Hit = dnsPacket(fmt.Sprintf("host%d.bytecode.example", last))
	case PacketPrefixes:
		c.Hit = fixture.UDP4(prefixRule(last).Addr().String(), fixture.ServerIPv4, 40000, 53, fixture.DNSQuery("www.example.org", 1))
	}
	return c, nil
}

// PacketCases are the per-packet rows' cases: every shape of
// PacketShapes at 1 and PacketRules rules, PacketPrefixes at PacketRules,
// then PacketMixed at MixedRules.
func PacketCases() ([]PacketCase, error) {
	var cs []PacketCase
	for _, shape := range PacketShapes {
		for _, n := range []int{1, PacketRules} {
			c, err := NewPacketCase(shape, n)
			if err != nil {
				return nil, err
			}
			cs = append(cs, c)
		}
	}
	c, err := NewPacketCase(PacketPrefixes, PacketRules)
	if err != nil {
		return nil, err
	}
	cs = append(cs, c)
	if c, err = NewPacketCase(PacketMixed, MixedRules); err != nil {
		return nil, err
	}
	cs = append(cs, c)
	// Sampling on, as the daemon runs with --auto or --sflow: the draw's
	// cost on every packet.
	if c, err = NewPacketCase("port", 1); err != nil {
		return nil, err
	}
	c.SampleRate = PacketSampleRate
	cs = append(cs, c)
	if c, err = NewAutoPacketCase(); err != nil {
		return nil, err
	}
	return append(cs, c), nil
}

// PacketSampleRate is the sampling of the per-packet row with sampling on.
const PacketSampleRate = 1000

// PacketAuto is the shape name of the auto rule row (NewAutoPacketCase).
const PacketAuto = "auto"

// NewAutoPacketCase returns the auto rule row's case: a rule set of one
// port rule that neither packet matches, and an auto rule of 8 conditions
// as the fingerprint engine writes one for a DNS flood (destination port,
// length, TTL, five words of the query), which the matching packet meets
// and the legitimate query fails at its second.
func NewAutoPacketCase() (PacketCase, error) {
	c, err := NewPacketCase("port", 1)
	if err != nil {
		return c, err
	}
	c.Shape = PacketAuto
	c.Hit = dnsPacket("host1.attack.example")
	query := c.Hit[14+20+8:]
	conds := []l4drop.AutoCond{
		{Base: l4drop.BaseL4, Size: 2, Off: 2, Mask: 0xffff, Min: 53, Max: 53},
		{Base: l4drop.BaseLen, Min: uint32(len(c.Hit) - 14), Max: uint32(len(c.Hit) - 14)},
		{Base: l4drop.BaseIP, Size: 1, Off: 8, Mask: 0xff, Min: uint32(c.Hit[14+8]), Max: uint32(c.Hit[14+8])},
	}
	for off := 12; len(conds) < l4drop.AutoConds; off += 4 {
		w := binary.BigEndian.Uint32(query[off:])
		conds = append(conds, l4drop.AutoCond{Base: l4drop.BasePayload, Size: 4, Off: uint16(off), Mask: 0xffffffff, Min: w, Max: w})
	}
	c.Auto = []l4drop.AutoRule{{State: l4drop.AutoDrop, Family: 4, Proto: 17, Conds: conds}}
	return c, nil
}

// PacketTiming is one program's cost for one packet, per round, in ns per
// packet: CPU is the thread's CPU time over a test run of many packets
// divided by them (sub-nanosecond, and blind to the time other work had
// the CPU), Kernel the kernel's own figure for the same run (whole ns,
// rounded down).
type PacketTiming struct {
	CPU, Kernel []float64
}

// Min is the fastest round's CPU figure: on a shared machine other work
// only ever adds time.
func (p PacketTiming) Min() float64 { return minOf(p.CPU) }

// KernelMin is the fastest round's kernel figure.
func (p PacketTiming) KernelMin() float64 { return minOf(p.Kernel) }

func minOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return slices.Min(v)
}

// PacketCost is a case's timings and those of drop-all in the same rounds,
// each run next to the other in turns.
type PacketCost struct {
	Case      PacketCase
	DropAll   PacketTiming
	Hit, Miss PacketTiming
	// Err is why the case was not measured.
	Err error
}

// HitExtra is the fastest round of the matching packet above drop-all's
// fastest round, in ns per packet; MissExtra the same of the miss.
func (p PacketCost) HitExtra() float64  { return p.Hit.Min() - p.DropAll.Min() }
func (p PacketCost) MissExtra() float64 { return p.Miss.Min() - p.DropAll.Min() }

// HitSpread is the quartiles of the rounds' differences between the
// matching packet and drop-all: how much the machine's other work moved
// them.
func (p PacketCost) HitSpread() [2]float64  { return quartiles(diff(p.Hit.CPU, p.DropAll.CPU)) }
func (p PacketCost) MissSpread() [2]float64 { return quartiles(diff(p.Miss.CPU, p.DropAll.CPU)) }

// PerPacket is the per-packet section: each case's cost in
// BPF_PROG_TEST_RUN, sampling off, against drop-all.
type PerPacket struct {
	Rounds, Runs int
	Costs        []PacketCost
}

// PacketProgram is a loaded rule set's first program with its case.
type PacketProgram struct {
	Case PacketCase
	Prog *ebpf.Program
}

// TimePackets runs each program over its case's two packets and drop-all
// over the matching packet, rounds times runs test runs each: per round,
// case by case, drop-all, the matching packet and the miss in turns. Each
// program is attached (generic XDP, a namespace of its own) for the whole
// run: the kernel's XDP dispatcher calls attached programs directly.
func TimePackets(ctx context.Context, progs []PacketProgram, rounds, runs int, logf func(string, ...any)) (_ []PacketCost, err error) {
	drop, err := newDropAll()
	if err != nil {
		return nil, fmt.Errorf("drop-all: %w", err)
	}
	defer drop.Close()
	var runners []*xdprun.Runner
	defer func() {
		for _, r := range runners {
			err = errors.Join(err, r.Close())
		}
	}()
	for _, p := range append([]*ebpf.Program{drop}, programsOf(progs)...) {
		r, err := xdprun.New()
		if err != nil {
			return nil, err
		}
		runners = append(runners, r)
		if err := r.Attach(p); err != nil {
			return nil, err
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	costs := make([]PacketCost, len(progs))
	for i, p := range progs {
		costs[i].Case = p.Case
	}
	for round := range rounds {
		for i, p := range progs {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			c := &costs[i]
			for _, t := range []struct {
				prog   *ebpf.Program
				pkt    []byte
				timing *PacketTiming
				want   uint32
			}{{drop, p.Case.Hit, &c.DropAll, 1}, {p.Prog, p.Case.Hit, &c.Hit, 1}, {p.Prog, p.Case.Miss, &c.Miss, 2}} {
				cpu, kernel, ret, err := timeRun(t.prog, t.pkt, runs)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", p.Case.Name(), err)
				}
				if ret != t.want {
					return nil, fmt.Errorf("%s: a test run returned %d, want %d", p.Case.Name(), ret, t.want)
				}
				t.timing.CPU = append(t.timing.CPU, cpu)
				t.timing.Kernel = append(t.timing.Kernel, kernel)
			}
		}
		if logf != nil {
			logf("per packet: round %d of %d", round+1, rounds)
		}
	}
	return costs, nil
}

func programsOf(progs []PacketProgram) []*ebpf.Program {
	out := make([]*ebpf.Program, len(progs))
	for i, p := range progs {
		out[i] = p.Prog
	}
	return out
}

// timeRun runs prog runs times over pkt in one test run and returns the
// thread's CPU time and the kernel's figure per run, in ns, and the
// program's return value. The caller has locked its OS thread.
func timeRun(prog *ebpf.Program, pkt []byte, runs int) (cpu, kernel float64, ret uint32, err error) {
	var t0, t1 unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0); err != nil {
		return 0, 0, 0, fmt.Errorf("thread CPU time: %w", err)
	}
	ret, d, err := prog.Benchmark(pkt, runs, nil)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("test run: %w", err)
	}
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1); err != nil {
		return 0, 0, 0, fmt.Errorf("thread CPU time: %w", err)
	}
	return float64(t1.Nano()-t0.Nano()) / float64(runs), float64(d.Nanoseconds()), ret, nil
}

// MeasurePerPacket builds cases (PacketCases in `make bench`) with l4drop
// build into dir, loads each as a dry run (sampling off, as in production at high
// rates), checks that the matching packet is dropped by the last rule and
// the miss passed by none, and times them (TimePackets).
func (t Tools) MeasurePerPacket(ctx context.Context, dir string, cases []PacketCase, rounds, runs int, logf func(string, ...any)) (*PerPacket, error) {
	var progs []PacketProgram
	failed := map[int]error{}
	for i, c := range cases {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		d, err := t.loadPacketCase(ctx, dir, c)
		if err != nil {
			logf("per packet: %s: %v", c.Name(), err)
			failed[i] = err
			continue
		}
		defer d.Close()
		progs = append(progs, PacketProgram{Case: c, Prog: d.Program()})
	}
	// The floors last: reference rows, measured in the same rounds.
	fc, err := floorCase()
	if err != nil {
		return nil, err
	}
	fdc, err := floorDNSCase()
	if err != nil {
		return nil, err
	}
	cases = append(slices.Clip(cases), fc, fdc)
	if coll, err := newFloor(ctx, floorPort, floorZone); err != nil {
		logf("per packet: %v", err)
		failed[len(cases)-2], failed[len(cases)-1] = err, err
	} else {
		defer coll.Close()
		progs = append(progs, PacketProgram{Case: fc, Prog: coll.Programs["floor_port"]},
			PacketProgram{Case: fdc, Prog: coll.Programs["floor_name"]})
	}
	measured, err := TimePackets(ctx, progs, rounds, runs, logf)
	if err != nil {
		return nil, err
	}
	pp := &PerPacket{Rounds: rounds, Runs: runs}
	for i, c := range cases {
		if err, ok := failed[i]; ok {
			pp.Costs = append(pp.Costs, PacketCost{Case: c, Err: err})
			continue
		}
		pp.Costs = append(pp.Costs, measured[0])
		measured = measured[1:]
	}
	return pp, nil
}

// loadPacketCase builds and loads c, sampling off, and checks its packets.
func (t Tools) loadPacketCase(ctx context.Context, dir string, c PacketCase) (*l4drop.DryRun, error) {
	name := fmt.Sprintf("packet-%s-%d-%d", c.Shape, c.Rules, c.SampleRate)
	obj, _, err := t.BuildRules(ctx, dir, name, c.YAML)
	if err != nil {
		return nil, err
	}
	elf, err := os.ReadFile(obj)
	if err != nil {
		return nil, err
	}
	d, err := l4drop.NewDryRun(elf, l4drop.LoadOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := PreparePacketCase(d, c); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// PreparePacketCase readies d, c's rule set loaded, for timing: it deploys
// c's auto rules, checks c's packets (CheckPacketCase) and sets c's
// sampling.
func PreparePacketCase(d *l4drop.DryRun, c PacketCase) error {
	if len(c.Auto) > 0 {
		if err := d.SetAutoRules(c.Auto); err != nil {
			return fmt.Errorf("%s: %w", c.Name(), err)
		}
	}
	if err := CheckPacketCase(d, c); err != nil {
		return err
	}
	if err := d.SetSampleRate(c.SampleRate); err != nil {
		return fmt.Errorf("%s: %w", c.Name(), err)
	}
	return nil
}

// CheckPacketCase checks that d, c's rule set loaded, drops c.Hit by the
// last rule and passes c.Miss by none.
func CheckPacketCase(d *l4drop.DryRun, c PacketCase) error {
	v, err := d.Run(c.Hit)
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name(), err)
	}
	want := uint32(c.Rules - 1)
	if len(c.Auto) > 0 {
		want = l4drop.AutoRuleBase(c.Rules) // the first slot's
	}
	if v.Action != "drop" || v.Rule != want {
		return fmt.Errorf("%s: the matching packet: %s by rule %d, want drop by %d", c.Name(), v.Action, int32(v.Rule), want)
	}
	if v, err = d.Run(c.Miss); err != nil {
		return fmt.Errorf("%s: %w", c.Name(), err)
	}
	if v.Action != "pass" || v.Rule != l4drop.NoRule {
		return fmt.Errorf("%s: the legitimate packet: %s by rule %d, want pass by none", c.Name(), v.Action, int32(v.Rule))
	}
	return nil
}

// packetTarget is the target for a case, in ns above drop-all.
func packetTarget(c PacketCase) float64 {
	switch {
	case c.Rules == 1:
		return 2
	case c.Shape == PacketMixed:
		return 10
	}
	return 5
}

func (p *PerPacket) markdown(b *strings.Builder) {
	if p == nil || len(p.Costs) == 0 {
		return
	}
	var base PacketTiming
	for _, c := range p.Costs {
		if c.Err == nil {
			base = c.DropAll
			break
		}
	}
	fmt.Fprintf(b, "\n## Per packet, in BPF_PROG_TEST_RUN\n\n"+
		"Each rule set's first program as it runs while nobody captures (its quiet twin, without xdpcap's hook: docs/xdpcap.md), sampling off (`sample_rate: 0`, as in production at high rates; one row with sampling on, as the daemon runs with --auto or --sflow), over a packet that "+
		"matches its last rule (every rule before it runs) and over a legitimate DNS query for www.example.org that none "+
		"matches, next to an XDP program that drops everything, %d rounds of %d test runs, drop-all, the matching packet "+
		"and the miss in turns. Each program stays attached (generic XDP in a namespace of its own), so the kernel's XDP "+
		"dispatcher calls it directly. The figures are the thread's CPU time over a round's test run divided by its runs "+
		"(the kernel reports whole ns per run, rounded down: in parentheses), the fastest round of each (other work on the "+
		"machine only ever adds time), and above drop-all the difference of the fastest rounds, with the quartiles of the "+
		"rounds' differences. Drop-all costs %.1f ns here (%.0f ns by the kernel's figure): the test run's own loop.\n\n",
		p.Rounds, p.Runs, base.Min(), base.KernelMin())
	if port, name := p.extraOf(PacketFloor, 1), p.extraOf(PacketFloorDNS, 1); port != notMeasured || name != notMeasured {
		fmt.Fprintf(b, "The last two rows are not L4Drop but floors under its one-rule rows: a port rule and a DNS wildcard rule written "+
			"by hand as the least a filter that counts per rule can do (untagged IPv4 only, the rule's counter in a per-CPU map looked "+
			"up as the program starts, the sampling test; no VLAN tags, no IPv6, no hook, no judging of malformed headers as libpcap "+
			"does): the port rule %s above drop-all, against %s for L4Drop's one port rule; the wildcard %s, against %s for "+
			"L4Drop's one wildcard and %s for its one exact name; the target is 2 ns.\n\n",
			port, p.extraOf("port", 1), name, p.extraOf("dnswild", 1), p.extraOf("dns", 1))
	}
	b.WriteString("| rule set | matching the last rule, ns | above drop-all (quartiles) | legitimate query, ns | above drop-all (quartiles) | target above drop-all |\n" +
		"|---|---:|---:|---:|---:|---:|\n")
	for _, c := range p.Costs {
		if c.Err != nil {
			fmt.Fprintf(b, "| %s | failed: %s | | | | |\n", c.Case.Name(), oneLine(c.Err.Error()))
			continue
		}
		hs, ms := c.HitSpread(), c.MissSpread()
		target := "-"
		switch c.Case.Shape {
		case PacketFloor, PacketFloorDNS, PacketAuto, PacketPrefixes:
		default:
			target = fmt.Sprintf("≤ %.0f ns", packetTarget(c.Case))
		}
		fmt.Fprintf(b, "| %s | %.1f (%.0f) | %+.1f (%+.1f to %+.1f) | %.1f (%.0f) | %+.1f (%+.1f to %+.1f) | %s |\n",
			c.Case.Name(), c.Hit.Min(), c.Hit.KernelMin(), c.HitExtra(), hs[0], hs[1],
			c.Miss.Min(), c.Miss.KernelMin(), c.MissExtra(), ms[0], ms[1], target)
	}
}

// notMeasured is what extraOf says of a case that has no figure.
const notMeasured = "not measured"

// extraOf is the matching packet's cost above drop-all of the case of
// shape and rules, as the table shows it, or notMeasured.
func (p *PerPacket) extraOf(shape string, rules int) string {
	for _, c := range p.Costs {
		if c.Case.Shape == shape && c.Case.Rules == rules && c.Err == nil {
			return fmt.Sprintf("%+.1f ns", c.HitExtra())
		}
	}
	return notMeasured
}
