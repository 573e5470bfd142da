package build

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
)

// autoMaps finds the auto rule table and its length in a loaded program.
func autoMaps(t *testing.T, prog *ebpf.Program) (table, count *ebpf.Map) {
	t.Helper()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		mi, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		switch mi.Name {
		case l4drop.MapAuto:
			table = m
		case l4drop.MapAutoCount:
			count = m
		default:
			m.Close()
		}
	}
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

// TestAutoRules: an auto rule in the table of a running program drops
// exactly the packets libpcap matches with the rule's pcap-filter
// rendering, after the rule set's own rules.
func TestAutoRules(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, "rules:\n  - name: keep-1\n    expr: \"udp dst port 1000\"\n    action: pass\n")
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	table, count := autoMaps(t, d.Program())
	defer table.Close()
	defer count.Close()

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
	keep, err := cbpf.NewFilter(mustCompile(t, "udp dst port 1000", cbpf.LinkTypeRaw))
	if err != nil {
		t.Fatal(err)
	}
	base := l4drop.AutoRuleBase(len(d.Meta.Rules))
	for k, ar := range rules {
		// Slot k behind k off slots: the loop skips them.
		slots := make([]l4drop.AutoRule, k+1)
		for j := range slots[:k] {
			slots[j] = l4drop.AutoRule{State: l4drop.AutoOff, Family: 4}
		}
		slots[k] = ar
		putAuto(t, table, count, slots...)
		// The rendering compiled for the rule's family; packets of the
		// other never match.
		lt := cbpf.LinkTypeIPv4
		if ar.Family == 6 {
			lt = cbpf.LinkTypeIPv6
		}
		ref, err := cbpf.NewFilter(mustCompile(t, ar.Expr(), lt))
		if err != nil {
			t.Fatal(err)
		}
		drops := 0
		for i, pkt := range pkts {
			got, err := d.Run(pkt)
			if err != nil {
				t.Fatal(err)
			}
			want := l4drop.Verdict{Action: "pass", Rule: l4drop.NoRule}
			if off, ok := fixture.IPOffset(pkt); ok {
				ip := pkt[off:]
				fam := uint8(4)
				if binary.BigEndian.Uint16(pkt[off-2:]) == 0x86dd {
					fam = 6
				}
				switch {
				case keep.Run(ip, len(ip)) != 0:
					want = l4drop.Verdict{Action: "pass", Rule: 0}
				case fam == ar.Family && ref.Run(ip, len(ip)) != 0:
					want = l4drop.Verdict{Action: "drop", Rule: base + uint32(k)}
					drops++
				}
			}
			if got.Action != want.Action || got.Rule != want.Rule {
				t.Errorf("auto rule %q in slot %d: packet %d (%x): got %+v, libpcap says %+v", ar.Expr(), k, i, pkt, got, want)
			}
		}
		t.Logf("%q: %d of %d packets dropped", ar.Expr(), drops, len(pkts))
	}
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

// counterOf sums the packets counter entry i of prog counted on all CPUs.
func counterOf(t *testing.T, prog *ebpf.Program, i int) uint64 {
	t.Helper()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if mi, err := m.Info(); err != nil || mi.Name != l4drop.MapCounters {
			continue
		}
		var per []struct{ Packets, Bytes uint64 }
		if err := m.Lookup(uint32(i), &per); err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, c := range per {
			n += c.Packets
		}
		return n
	}
	t.Fatal("no counters map")
	return 0
}

func mustCompile(t *testing.T, expr string, lt cbpf.LinkType) []bpf.Instruction {
	t.Helper()
	p, err := cbpf.Compile(expr, lt, 0)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return p
}
