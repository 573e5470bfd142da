package sflow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// TestDatagramGoflow2 encodes datagrams of each kind and checks that
// goflow2's decoder reads back every field, and that the sizes this package
// plans datagrams with are the sizes it writes.
func TestDatagramGoflow2(t *testing.T) {
	frame := bytes.Repeat([]byte{0xab}, 200)
	flow := func(n int, out Interface) FlowSample {
		return FlowSample{
			Sequence: 7, Source: 3, SamplingRate: 100, SamplePool: 700, Drops: 2,
			Input: Interface{Value: 3}, Output: out,
			Header: RawHeader{Protocol: HeaderProtocolEthernet, FrameLength: uint32(n) + 4, Stripped: 4, Header: frame[:n]},
		}
	}
	ifc := &IfCounters{Index: 3, Type: 6, Speed: 10e9, Direction: 1, Status: 3, InOctets: 1 << 40,
		InUcast: 10, InMulticast: 1, InBroadcast: ^uint32(0), OutOctets: 5, OutUcast: 6,
		OutMulticast: ^uint32(0), OutBroadcast: ^uint32(0), Promiscuous: 2}
	rules := &RuleCounters{Total: 3, Rules: []Rule{
		{Index: 0, Action: 1, Packets: 1e12, Bytes: 6e13, Name: "syn-flood-80"},
		{Index: 1, Action: 2, Packets: 0, Bytes: 0, Name: ""},
		{Index: NoRule, Action: 2, Packets: 5, Bytes: 426, Name: "naïve-ü"},
	}}
	tests := []struct {
		name string
		d    Datagram
	}{
		{"empty v4", Datagram{Agent: netip.MustParseAddr("192.0.2.1"), Sequence: 1}},
		{"empty v6", Datagram{Agent: netip.MustParseAddr("2001:db8::1"), SubAgentID: 9, Sequence: 1, Uptime: 12345}},
		{"flows", Datagram{Agent: netip.MustParseAddr("192.0.2.1"), Flows: []FlowSample{
			flow(0, Interface{}), flow(1, Discarded(DiscardACL)), flow(3, Interface{}), flow(4, Interface{}),
			flow(60, Discarded(DiscardACL)), flow(128, Interface{Value: 1<<30 - 1})}}},
		{"expanded", Datagram{Agent: netip.MustParseAddr("192.0.2.1"), Expanded: true, Enterprise: DefaultEnterprise,
			Flows: []FlowSample{
				{Sequence: 1, Source: 1 << 24, SamplingRate: 1, Input: Interface{Value: 1 << 24},
					Output: Discarded(DiscardACL), Header: RawHeader{Protocol: 1, Header: frame[:14]}},
				{Sequence: 2, Source: ^uint32(0), SamplingRate: 1, Input: Interface{Value: ^uint32(0)},
					Header: RawHeader{Protocol: 1, Header: frame[:15]}},
			},
			Counters: []CounterSample{{Sequence: 1, Source: 1 << 24, Interface: ifc, Rules: rules}}}},
		{"counters", Datagram{Agent: netip.MustParseAddr("198.51.100.7"), Enterprise: DefaultEnterprise,
			Counters: []CounterSample{
				{Sequence: 1, Source: 3, Interface: ifc, Rules: rules},
				{Sequence: 2, Source: 3, Rules: &RuleCounters{Total: 3}},
				{Sequence: 3, Source: 3, Interface: ifc},
				{Sequence: 4, Source: 3},
			}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.d.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if len(b)%4 != 0 {
				t.Errorf("%d bytes, not a multiple of 4", len(b))
			}
			want := headerLen(tt.d.Agent)
			for i := range tt.d.Flows {
				want += flowSampleLen(len(tt.d.Flows[i].Header.Header), tt.d.Expanded)
			}
			for i := range tt.d.Counters {
				want += counterSampleLen(&tt.d.Counters[i], tt.d.Expanded)
			}
			if len(b) != want {
				t.Errorf("encoded %d bytes, planned %d", len(b), want)
			}
			p, err := decodeGoflow(b)
			if err != nil {
				t.Fatalf("goflow2: %v", err)
			}
			got, err := fromGoflow(p)
			if err != nil {
				t.Fatal(err)
			}
			checkSame(t, got, &tt.d)
		})
	}
}

// TestDiscardEncoding pins the output interface words of a dropped packet:
// 0x40000000|258 compact, {1, 258} expanded.
func TestDiscardEncoding(t *testing.T) {
	for _, expanded := range []bool{false, true} {
		d := Datagram{Agent: netip.MustParseAddr("192.0.2.1"), Expanded: expanded, Flows: []FlowSample{
			{Source: 5, Input: Interface{Value: 5}, Output: Discarded(DiscardACL)}}}
		b, err := d.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		// Header 28 bytes, sample_record 8, then sequence, source(s), rate,
		// pool, drops, input, output.
		at := 28 + 8 + 4 + 4 + 3*4
		if expanded {
			at += 4 // source type
			if got := binary.BigEndian.Uint64(b[at:]); got != 5 {
				t.Errorf("expanded input = %#x, want format 0, ifindex 5", got)
			}
			if got := binary.BigEndian.Uint64(b[at+8:]); got != 1<<32|258 {
				t.Errorf("expanded output = %#x, want format 1, reason 258", got)
			}
			continue
		}
		if got := binary.BigEndian.Uint32(b[at:]); got != 5 {
			t.Errorf("input = %#x, want 5", got)
		}
		if got := binary.BigEndian.Uint32(b[at+4:]); got != 0x40000000|258 {
			t.Errorf("output = %#x, want 0x40000102", got)
		}
	}
}

// TestDatagramErrors: values that do not fit their fields are errors, not
// silently cut.
func TestDatagramErrors(t *testing.T) {
	agent := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		name string
		d    Datagram
	}{
		{"compact source", Datagram{Agent: agent, Flows: []FlowSample{{Source: 1 << 24}}}},
		{"compact counter source", Datagram{Agent: agent, Counters: []CounterSample{{Source: 1 << 24}}}},
		{"compact interface", Datagram{Agent: agent, Flows: []FlowSample{{Input: Interface{Value: 1 << 30}}}}},
		{"compact format", Datagram{Agent: agent, Flows: []FlowSample{{Output: Interface{Format: 4}}}}},
		{"enterprise", Datagram{Agent: agent, Enterprise: 1 << 20, Counters: []CounterSample{{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.d.MarshalBinary(); !errors.Is(err, ErrRange) {
				t.Fatalf("err = %v, want ErrRange", err)
			}
		})
	}
}

func TestCutName(t *testing.T) {
	long := strings.Repeat("a", MaxRuleName-1) + "é" // é straddles the limit
	tests := []struct{ in, want string }{
		{"", ""},
		{"syn-80", "syn-80"},
		{strings.Repeat("x", MaxRuleName), strings.Repeat("x", MaxRuleName)},
		{strings.Repeat("x", MaxRuleName+1), strings.Repeat("x", MaxRuleName)},
		{long, strings.Repeat("a", MaxRuleName-1)},
	}
	for _, tt := range tests {
		if got := cutName(tt.in); got != tt.want {
			t.Errorf("cutName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseRuleCountersErrors(t *testing.T) {
	good := func() []byte {
		d := Datagram{Agent: netip.MustParseAddr("192.0.2.1"), Enterprise: 1, Counters: []CounterSample{{
			Rules: &RuleCounters{Total: 1, Rules: []Rule{{Name: "abcde"}}}}}}
		b, err := d.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		// datagram header 28, sample_record 8, sequence, source, count 12,
		// record format and length 8.
		return b[28+8+12+8:]
	}
	if _, err := ParseRuleCounters(good()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func([]byte) []byte
	}{
		{"empty", func(b []byte) []byte { return nil }},
		{"short", func(b []byte) []byte { return b[:7] }},
		{"count too large", func(b []byte) []byte { binary.BigEndian.PutUint32(b[4:], 1<<31); return b }},
		{"rule cut", func(b []byte) []byte { return b[:8+20] }},
		{"name too long", func(b []byte) []byte { binary.BigEndian.PutUint32(b[8+24:], MaxRuleName+1); return b }},
		{"name past end", func(b []byte) []byte { binary.BigEndian.PutUint32(b[8+24:], 9); return b }},
		{"trailing", func(b []byte) []byte { return append(b, 0, 0, 0, 0) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseRuleCounters(tt.edit(good())); !errors.Is(err, ErrFormat) {
				t.Fatalf("err = %v, want ErrFormat", err)
			}
		})
	}
}

// FuzzRoundTrip: random datagrams, encoded here and decoded by goflow2,
// come back field for field.
func FuzzRoundTrip(f *testing.F) {
	for _, seed := range []uint64{0, 1, 42, 1 << 40} {
		f.Add(seed, uint8(3), uint8(2))
	}
	f.Add(uint64(7), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, seed uint64, flows, counters uint8) {
		d := randomDatagram(seed, int(flows%16), int(counters%4))
		b, err := d.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		p, err := decodeGoflow(b)
		if err != nil {
			t.Fatalf("goflow2: %v", err)
		}
		got, err := fromGoflow(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Counters) == 0 || !hasRules(d) {
			got.Enterprise = d.Enterprise // not on the wire
		}
		if len(d.Counters)+len(d.Flows) == 0 {
			got.Expanded = d.Expanded
		}
		checkSame(t, got, d)
	})
}

// FuzzDecode: whatever goflow2 accepts and this package can express
// encodes back to a datagram goflow2 reads the same way, and the rule
// counter parser never fails on what the encoder wrote.
func FuzzDecode(f *testing.F) {
	for _, seed := range []uint64{1, 2, 3} {
		b, err := randomDatagram(seed, 2, 2).MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0, 0, 0, 5, 0, 0, 0, 1, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseRuleCounters(b) // must not panic, whatever b is
		p, err := decodeGoflow(b)
		if err != nil {
			return
		}
		d, err := fromGoflow(p)
		if err != nil {
			return
		}
		enc, err := d.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", d, err)
		}
		p2, err := decodeGoflow(enc)
		if err != nil {
			t.Fatalf("goflow2 rejects the re-encoded datagram: %v", err)
		}
		d2, err := fromGoflow(p2)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, d2, d)
	})
}

func hasRules(d *Datagram) bool {
	for _, c := range d.Counters {
		if c.Rules != nil {
			return true
		}
	}
	return false
}

// checkSame compares datagrams, nil and empty slices alike.
func checkSame(t *testing.T, got, want *Datagram) {
	t.Helper()
	g, w := normalized(got), normalized(want)
	if !reflect.DeepEqual(g, w) {
		t.Errorf("datagrams differ\n got %+v\nwant %+v", g, w)
		for i := range min(len(g.Flows), len(w.Flows)) {
			if !reflect.DeepEqual(g.Flows[i], w.Flows[i]) {
				t.Errorf("flow %d\n got %+v\nwant %+v", i, g.Flows[i], w.Flows[i])
			}
		}
		for i := range min(len(g.Counters), len(w.Counters)) {
			if !reflect.DeepEqual(g.Counters[i], w.Counters[i]) {
				t.Errorf("counter %d\n got %+v %+v\nwant %+v %+v", i, g.Counters[i].Interface, g.Counters[i].Rules,
					w.Counters[i].Interface, w.Counters[i].Rules)
			}
		}
	}
}

func normalized(d *Datagram) Datagram {
	n := *d
	n.Flows, n.Counters = nil, nil
	for _, f := range d.Flows {
		f.Header.Header = append([]byte{}, f.Header.Header...)
		n.Flows = append(n.Flows, f)
	}
	for _, c := range d.Counters {
		if c.Rules != nil {
			rc := RuleCounters{Total: c.Rules.Total, Rules: []Rule{}}
			for _, r := range c.Rules.Rules {
				r.Name = cutName(r.Name)
				rc.Rules = append(rc.Rules, r)
			}
			c.Rules = &rc
		}
		n.Counters = append(n.Counters, c)
	}
	if !hasRules(d) {
		n.Enterprise = 0
	}
	return n
}
