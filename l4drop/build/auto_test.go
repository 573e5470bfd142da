package build

import (
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/fingerprint"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
)

// autoMaps finds the auto rule table and its length in a loaded program.
func autoMaps(t *testing.T, prog *ebpf.Program) (table, count *ebpf.Map) {
	t.Helper()
	table, count = progMap(t, prog, l4drop.MapAuto), progMap(t, prog, l4drop.MapAutoCount)
	if table == nil || count == nil {
		t.Fatalf("program without %s and %s", l4drop.MapAuto, l4drop.MapAutoCount)
	}
	return table, count
}

// putAuto writes rules into the table, from slot 0, and their number.
func putAuto(t *testing.T, table, count *ebpf.Map, rules ...l4drop.AutoRule) {
	t.Helper()
	for k := range rules {
		b, err := rules[k].MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if err := table.Put(uint32(k), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := count.Put(uint32(0), uint32(len(rules))); err != nil {
		t.Fatal(err)
	}
}

// autoLab is a dry run of a rule set with one pass rule (udp dst port
// 1000) and the packets auto rules are judged on: fixture packets, their
// malformed variants, and a sample of the corpus's frames.
type autoLab struct {
	d            *l4drop.DryRun
	table, count *ebpf.Map
	keep         *cbpf.Filter
	pkts         [][]byte
}

func newAutoLab(t *testing.T) *autoLab {
	t.Helper()
	fixture.RequireRoot(t)
	obj := buildYAML(t, "rules:\n  - name: keep-1\n    expr: \"udp dst port 1000\"\n    action: pass\n")
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	table, count := autoMaps(t, d.Program())
	t.Cleanup(func() { table.Close(); count.Close() })
	keep, err := cbpf.NewFilter(mustCompile(t, "udp dst port 1000", cbpf.LinkTypeRaw))
	if err != nil {
		t.Fatal(err)
	}
	c4, s4, c6, s6 := fixture.ClientIPv4, fixture.ServerIPv4, fixture.ClientIPv6, fixture.ServerIPv6
	pkts := [][]byte{
		fixture.UDP4(c4, s4, 1, 53, nil), fixture.UDP4(c4, s4, 1, 1000, nil), fixture.UDP6(c6, s6, 1, 53, []byte{1, 2, 3}),
		fixture.TCP4SYN(c4, s4, 1, 443), fixture.TCP6SYN(c6, s6, 1, 443), fixture.UDP4(c4, s4, 1, 53, make([]byte, 200)),
	}
	for _, p := range pkts[:] {
		pkts = append(pkts, malformed(p)...)
	}
	corpus := corpusIP(t)
	for k := 0; k < len(corpus); k += max(1, len(corpus)/600) {
		pkts = append(pkts, corpus[k])
	}
	return &autoLab{d: d, table: table, count: count, keep: keep, pkts: pkts}
}

// judge puts ar in slot k, behind k slots that are off, and checks the
// program's verdict on every packet against libpcap's on the rule's
// pcap-filter rendering (and the rule set's pass rule before it), and
// fingerprint.Match, the Go evaluator, against libpcap. It returns how
// many packets the rule dropped.
func (l *autoLab) judge(t *testing.T, k int, ar l4drop.AutoRule) int {
	t.Helper()
	slots := make([]l4drop.AutoRule, k+1)
	for j := range slots[:k] {
		slots[j] = l4drop.AutoRule{State: l4drop.AutoOff, Family: 4}
	}
	slots[k] = ar
	putAuto(t, l.table, l.count, slots...)
	// The rendering compiled for the rule's family; packets of the other
	// never match.
	lt := cbpf.LinkTypeIPv4
	if ar.Family == 6 {
		lt = cbpf.LinkTypeIPv6
	}
	prog, err := cbpf.Compile(ar.Expr(), lt, 0)
	if err != nil && strings.Contains(err.Error(), "rejects all packets") {
		// libpcap's optimizer found conditions that contradict.
		prog, err = []bpf.Instruction{bpf.RetConstant{Val: 0}}, nil
	}
	if err != nil {
		t.Fatalf("%s: %v", ar.Expr(), err)
	}
	ref, err := cbpf.NewFilter(prog)
	if err != nil {
		t.Fatal(err)
	}
	base := l4drop.AutoRuleBase(len(l.d.Meta.Rules))
	verdicts, _, err := l.d.RunBatch(l.pkts)
	if err != nil {
		t.Fatal(err)
	}
	drops := 0
	for i, pkt := range l.pkts {
		got := verdicts[i]
		want := l4drop.Verdict{Action: "pass", Rule: l4drop.NoRule}
		if off, ok := fixture.IPOffset(pkt); ok {
			ip := pkt[off:]
			fam := uint8(4)
			if binary.BigEndian.Uint16(pkt[off-2:]) == 0x86dd {
				fam = 6
			}
			pm := fam == ar.Family && ref.Run(ip, len(ip)) != 0
			if m := fingerprint.Match(&ar, fingerprint.Packet{Data: ip, Family: fam}); m != pm {
				t.Errorf("auto rule %q: packet %d (%x): fingerprint.Match says %v, libpcap %v", ar.Expr(), i, pkt, m, pm)
			}
			switch {
			case l.keep.Run(ip, len(ip)) != 0:
				want = l4drop.Verdict{Action: "pass", Rule: 0}
			case pm:
				want = l4drop.Verdict{Action: "drop", Rule: base + uint32(k)}
				drops++
			}
		}
		if got.Action != want.Action || got.Rule != want.Rule {
			t.Errorf("auto rule %q in slot %d: packet %d (%x): got %+v, libpcap says %+v", ar.Expr(), k, i, pkt, got, want)
		}
	}
	return drops
}

// TestAutoRules: an auto rule in the table of a running program drops
// exactly the packets libpcap matches with the rule's pcap-filter
// rendering, after the rule set's own rules.
func TestAutoRules(t *testing.T) {
	l := newAutoLab(t)
	u16 := func(base l4drop.AutoBase, off uint16, lo, hi uint32) l4drop.AutoCond {
		return l4drop.AutoCond{Base: base, Size: 2, Off: off, Mask: 0xffff, Min: lo, Max: hi}
	}
	rules := []l4drop.AutoRule{
		{State: l4drop.AutoDrop, Family: 4, Proto: 17, Conds: []l4drop.AutoCond{u16(l4drop.BaseL4, 2, 53, 53)}},
		{State: l4drop.AutoDrop, Family: 4, Proto: 17, Conds: []l4drop.AutoCond{u16(l4drop.BaseL4, 2, 1000, 1000)}}, // after keep-1
		{State: l4drop.AutoDrop, Family: 6, Proto: 17, Conds: []l4drop.AutoCond{u16(l4drop.BaseL4, 2, 53, 53), {Base: l4drop.BasePayload, Size: 1, Off: 0, Mask: 0xff, Min: 1, Max: 1}}},
		{State: l4drop.AutoDrop, Family: 4, Proto: 6, Conds: []l4drop.AutoCond{{Base: l4drop.BaseL4, Size: 1, Off: 13, Mask: 0x12, Min: 2, Max: 2}}},
		{State: l4drop.AutoDrop, Family: 6, Proto: 6, Conds: []l4drop.AutoCond{u16(l4drop.BasePayload, 0, 0, 0xffff)}},
		{State: l4drop.AutoDrop, Family: 4, Conds: []l4drop.AutoCond{{Base: l4drop.BaseIP, Size: 1, Off: 8, Mask: 0xff, Min: 0, Max: 64}}},
		{State: l4drop.AutoDrop, Family: 4, Conds: []l4drop.AutoCond{{Base: l4drop.BaseLen, Min: 100, Max: 1500}}},
		{State: l4drop.AutoDrop, Family: 4, Proto: 1, Conds: []l4drop.AutoCond{{Base: l4drop.BaseL4, Size: 1, Off: 0, Mask: 0xff, Min: 8, Max: 8}}},
		{State: l4drop.AutoDrop, Family: 4, Conds: []l4drop.AutoCond{{Base: l4drop.BaseL4, Size: 4, Off: 0, Mask: 0xffff0000, Min: 0, Max: 1023 << 16}}},
		{State: l4drop.AutoDrop, Family: 6, Conds: []l4drop.AutoCond{{Base: l4drop.BaseIP, Size: 4, Off: 4, Mask: 0xffff0000, Min: 0, Max: 100 << 16}}},
	}
	for k, ar := range rules {
		drops := l.judge(t, k, ar)
		t.Logf("%q: %d of %d packets dropped", ar.Expr(), drops, len(l.pkts))
	}
}

// TestAutoRulesRandom judges random auto rules as TestAutoRules does: any
// base, size, offset (up to and past the largest packet), mask and
// bounds, in any slot, with bounds taken from a packet's field so that
// rules of several conditions match some packets and miss others.
func TestAutoRulesRandom(t *testing.T) {
	l := newAutoLab(t)
	r := rand.New(rand.NewPCG(7, 11))
	n := 300
	if testing.Short() {
		n = 60
	}
	matched := 0
	for i := range n {
		ar := randomAutoRule(r, l.pkts)
		if err := ar.Validate(); err != nil {
			t.Fatalf("rule %d: %v", i, err)
		}
		if l.judge(t, r.IntN(l4drop.AutoSlots), ar) > 0 {
			matched++
		}
		if t.Failed() {
			break
		}
	}
	// The bounds come from packets: most rules must match something, or
	// the test would only be checking misses.
	if matched < n/4 {
		t.Errorf("%d of %d random rules matched any packet", matched, n)
	}
	t.Logf("%d of %d random rules matched some packets", matched, n)
}

// randomAutoRule makes a rule of the family of one of pkts (Ethernet
// frames), its conditions' bounds around the values that packet has, as
// the auto table would read them, where it has them.
func randomAutoRule(r *rand.Rand, pkts [][]byte) l4drop.AutoRule {
	frame := pkts[r.IntN(len(pkts))]
	var ip []byte
	if off, ok := fixture.IPOffset(frame); ok {
		ip = frame[off:]
	}
	ar := l4drop.AutoRule{State: l4drop.AutoDrop, Family: 4}
	if len(ip) > 0 && ip[0]>>4 == 6 || len(ip) == 0 && r.IntN(2) == 0 {
		ar.Family = 6
	}
	var proto byte
	if ar.Family == 4 && len(ip) > 9 {
		proto = ip[9]
	} else if ar.Family == 6 && len(ip) > 6 {
		proto = ip[6]
	}
	switch r.IntN(4) {
	case 0: // any protocol
	case 1:
		ar.Proto = []uint8{1, 6, 17, 58}[r.IntN(4)]
	default:
		ar.Proto = proto
	}
	// Where the packet's headers start, for choosing bounds only: the
	// judge is libpcap.
	l4, payload := -1, -1
	if ar.Family == 4 && len(ip) >= 20 && binary.BigEndian.Uint16(ip[6:])&0x1fff == 0 {
		l4 = int(ip[0]&15) * 4
	} else if ar.Family == 6 {
		l4 = 40
	}
	if l4 >= 0 && proto == 17 {
		payload = l4 + 8
	} else if l4 >= 0 && proto == 6 && l4+13 <= len(ip) {
		payload = l4 + int(ip[l4+12]>>4)*4
	}
	// Most rules are made to match the packet; the others miss it in
	// one condition (or anywhere, with bounds drawn at random).
	n := 1 + r.IntN(l4drop.AutoConds)
	miss := -1
	if r.IntN(3) == 0 {
		miss = r.IntN(n)
	}
	for i := range n {
		c := l4drop.AutoCond{Size: []uint8{1, 2, 4}[r.IntN(3)]}
		bases := []l4drop.AutoBase{l4drop.BaseIP, l4drop.BaseL4, l4drop.BaseLen}
		if ar.Proto == 6 || ar.Proto == 17 {
			bases = append(bases, l4drop.BasePayload)
		}
		c.Base = bases[r.IntN(len(bases))]
		start := map[l4drop.AutoBase]int{l4drop.BaseIP: 0, l4drop.BaseL4: l4, l4drop.BasePayload: payload}[c.Base]
		switch r.IntN(20) {
		case 0: // anywhere a packet might reach, and past it
			c.Off = uint16(r.IntN(4000))
		case 1:
			c.Off = uint16(0x3ff0 + r.IntN(0xc010))
		case 2: // at its end, or just past it
			c.Off = uint16(max(0, len(ip)-max(start, 0)-int(c.Size)+r.IntN(4)))
		default: // in the packet
			c.Off = uint16(r.IntN(max(1, len(ip)-max(start, 0)-int(c.Size)+1)))
		}
		full := uint32(1)<<(8*uint32(c.Size)) - 1
		if c.Size == 4 {
			full = 0xffffffff
		}
		c.Mask = full
		if r.IntN(3) == 0 {
			c.Mask &= r.Uint32()
		}
		// The packet's value, where it has one.
		var v uint32
		if c.Base == l4drop.BaseLen {
			v = uint32(len(ip))
		} else if o := start + int(c.Off); start >= 0 && o+int(c.Size) <= len(ip) {
			for _, b := range ip[o : o+int(c.Size)] {
				v = v<<8 | uint32(b)
			}
			v &= c.Mask
		} else {
			v = r.Uint32() & c.Mask
		}
		switch {
		case i == miss && r.IntN(4) == 0: // anything
			c.Min, c.Max = r.Uint32(), r.Uint32()
			if c.Min > c.Max {
				c.Min, c.Max = c.Max, c.Min
			}
		case i == miss && v > 0: // just below it
			c.Min, c.Max = v-min(v, 1+r.Uint32N(50)), v-1
		case i == miss: // just above it
			c.Min, c.Max = 1, 1+r.Uint32N(50)
		case r.IntN(2) == 0: // exactly
			c.Min, c.Max = v, v
		default: // around it
			c.Min, c.Max = v-min(v, r.Uint32N(100)), v+min(^v, r.Uint32N(100))
		}
		ar.Conds = append(ar.Conds, c)
	}
	return ar
}

// TestAutoMonitor: a monitor slot counts its packets and lets the next
// slot judge them.
func TestAutoMonitor(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, "rules:\n  - name: r\n    expr: \"udp dst port 1000\"\n")
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetSampleRate(0); err != nil {
		t.Fatal(err)
	}
	table, count := autoMaps(t, d.Program())
	defer table.Close()
	defer count.Close()
	dns := l4drop.AutoCond{Base: l4drop.BaseL4, Size: 2, Off: 2, Mask: 0xffff, Min: 53, Max: 53}
	putAuto(t, table, count,
		l4drop.AutoRule{State: l4drop.AutoMonitor, Family: 4, Proto: 17, Conds: []l4drop.AutoCond{dns}},
		l4drop.AutoRule{State: l4drop.AutoDrop, Family: 4, Proto: 17, Conds: []l4drop.AutoCond{dns, {Base: l4drop.BaseLen, Min: 100, Max: 0xffff}}},
	)
	small := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, nil)
	big := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, make([]byte, 200))
	for _, tt := range []struct {
		pkt  []byte
		want uint32
	}{{small, 2}, {big, 1}, {small, 2}} { // XDP_PASS, XDP_DROP
		ret, err := d.Program().Run(&ebpf.RunOptions{Data: tt.pkt})
		if err != nil {
			t.Fatal(err)
		}
		if ret != tt.want {
			t.Errorf("%d-byte packet: XDP action %d, want %d", len(tt.pkt), ret, tt.want)
		}
	}
	n := len(d.Meta.Rules)
	for slot, want := range []uint64{3, 1} {
		got := counterOf(t, d.Program(), n+1+slot)
		if got != want {
			t.Errorf("auto slot %d counted %d packets, want %d", slot, got, want)
		}
	}
}

func mustCompile(t *testing.T, expr string, lt cbpf.LinkType) []bpf.Instruction {
	t.Helper()
	p, err := cbpf.Compile(expr, lt, 0)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return p
}
