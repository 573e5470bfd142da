package sflow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"

	gf "github.com/netsampler/goflow2/v2/decoders/sflow"
)

// errUnrepresentable marks goflow2 views holding what this package never
// writes (other sample or record kinds, truncated lists).
var errUnrepresentable = errors.New("not representable")

// errGoflowOOM marks datagrams goflow2 v2.2.6 cannot decode without
// running out of memory: it bounds the record count of every sample kind
// but the expanded flow sample, whose count it allocates as given (up to
// 2^32 records). Found by FuzzDecode; the fuzz seed stays in testdata.
var errGoflowOOM = errors.New("expanded flow sample with more than 1000 records")

// decodeGoflow decodes a datagram with goflow2's sFlow decoder, the one
// goflow2 collectors run.
func decodeGoflow(b []byte) (*gf.Packet, error) {
	if expandedRecordBomb(b) {
		return nil, errGoflowOOM
	}
	var p gf.Packet
	if err := gf.DecodeMessageVersion(bytes.NewBuffer(b), &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// expandedRecordBomb walks the datagram's samples as goflow2 does and
// reports an expanded flow sample announcing more than 1000 records.
func expandedRecordBomb(b []byte) bool {
	word := func(at int) (uint32, bool) {
		if at < 0 || at+4 > len(b) {
			return 0, false
		}
		return binary.BigEndian.Uint32(b[at:]), true
	}
	at := 8
	switch t, _ := word(4); t {
	case 1:
		at += 4
	case 2:
		at += 16
	default:
		return false
	}
	count, ok := word(at + 12)
	if !ok {
		return false
	}
	at += 16
	for range min(count, 1000) {
		format, ok1 := word(at)
		length, ok2 := word(at + 4)
		if !ok1 || !ok2 || int(length) > len(b)-at-8 {
			return false
		}
		if format == formatFlowSampleExpanded {
			// sequence, source type and index, rate, pool, drops, input
			// and output format and value: 10 words before the count.
			if n, ok := word(at + 8 + 40); ok && n > 1000 && 40+4 <= length {
				return true
			}
		}
		at += 8 + int(length)
	}
	return false
}

// fromGoflow converts goflow2's view of a datagram into a Datagram.
func fromGoflow(p *gf.Packet) (*Datagram, error) {
	d := &Datagram{SubAgentID: p.SubAgentId, Sequence: p.SequenceNumber, Uptime: p.Uptime}
	agent, ok := netip.AddrFromSlice(p.AgentIP)
	if !ok {
		return nil, fmt.Errorf("agent %x: %w", []byte(p.AgentIP), errUnrepresentable)
	}
	d.Agent = agent
	if int(p.SamplesCount) != len(p.Samples) {
		return nil, fmt.Errorf("%d samples of %d: %w", len(p.Samples), p.SamplesCount, errUnrepresentable)
	}
	formats := map[bool]bool{}
	for i, s := range p.Samples {
		switch s := s.(type) {
		case gf.FlowSample:
			formats[false] = true
			f, err := flowFromGoflow(s.Header, s.SamplingRate, s.SamplePool, s.Drops, s.FlowRecordsCount, s.Records)
			if err != nil {
				return nil, fmt.Errorf("sample %d: %w", i, err)
			}
			f.Input = Interface{Format: s.Input >> 30, Value: s.Input & (1<<30 - 1)}
			f.Output = Interface{Format: s.Output >> 30, Value: s.Output & (1<<30 - 1)}
			d.Flows = append(d.Flows, f)
		case gf.ExpandedFlowSample:
			formats[true] = true
			f, err := flowFromGoflow(s.Header, s.SamplingRate, s.SamplePool, s.Drops, s.FlowRecordsCount, s.Records)
			if err != nil {
				return nil, fmt.Errorf("sample %d: %w", i, err)
			}
			f.Input = Interface{Format: s.InputIfFormat, Value: s.InputIfValue}
			f.Output = Interface{Format: s.OutputIfFormat, Value: s.OutputIfValue}
			d.Flows = append(d.Flows, f)
		case gf.CounterSample:
			formats[s.Header.Format == formatCounterSampleExpanded] = true
			c, err := countersFromGoflow(d, s)
			if err != nil {
				return nil, fmt.Errorf("sample %d: %w", i, err)
			}
			d.Counters = append(d.Counters, c)
		default:
			return nil, fmt.Errorf("sample %d: %T: %w", i, s, errUnrepresentable)
		}
	}
	if len(formats) > 1 {
		return nil, fmt.Errorf("compact and expanded samples: %w", errUnrepresentable)
	}
	d.Expanded = formats[true]
	return d, nil
}

func flowFromGoflow(h gf.SampleHeader, rate, pool, drops, nrec uint32, recs []gf.FlowRecord) (FlowSample, error) {
	f := FlowSample{Sequence: h.SampleSequenceNumber, Source: h.SourceIdValue, SamplingRate: rate, SamplePool: pool, Drops: drops}
	if h.SourceIdType != 0 || nrec != 1 || len(recs) != 1 {
		return f, fmt.Errorf("source type %d, %d records: %w", h.SourceIdType, nrec, errUnrepresentable)
	}
	raw, ok := recs[0].Data.(gf.SampledHeader)
	if recs[0].Header.DataFormat != formatRawHeader || !ok || int(raw.OriginalLength) > len(raw.HeaderData) {
		return f, fmt.Errorf("record %d (%T): %w", recs[0].Header.DataFormat, recs[0].Data, errUnrepresentable)
	}
	f.Header = RawHeader{Protocol: raw.Protocol, FrameLength: raw.FrameLength, Stripped: raw.Stripped,
		Header: raw.HeaderData[:raw.OriginalLength]}
	return f, nil
}

func countersFromGoflow(d *Datagram, s gf.CounterSample) (CounterSample, error) {
	c := CounterSample{Sequence: s.Header.SampleSequenceNumber, Source: s.Header.SourceIdValue}
	if s.Header.SourceIdType != 0 || int(s.CounterRecordsCount) != len(s.Records) {
		return c, errUnrepresentable
	}
	for _, r := range s.Records {
		switch data := r.Data.(type) {
		case gf.IfCounters:
			if c.Interface != nil || r.Header.DataFormat != formatIfCounters || r.Header.Length != ifCountersLen {
				return c, errUnrepresentable
			}
			c.Interface = &IfCounters{
				Index: data.IfIndex, Type: data.IfType, Speed: data.IfSpeed, Direction: data.IfDirection,
				Status: data.IfStatus, InOctets: data.IfInOctets, InUcast: data.IfInUcastPkts,
				InMulticast: data.IfInMulticastPkts, InBroadcast: data.IfInBroadcastPkts,
				InDiscards: data.IfInDiscards, InErrors: data.IfInErrors, InUnknown: data.IfInUnknownProtos,
				OutOctets: data.IfOutOctets, OutUcast: data.IfOutUcastPkts, OutMulticast: data.IfOutMulticastPkts,
				OutBroadcast: data.IfOutBroadcastPkts, OutDiscards: data.IfOutDiscards, OutErrors: data.IfOutErrors,
				Promiscuous: data.IfPromiscuousMode,
			}
		case gf.RawRecord:
			ent, format := r.Header.DataFormat>>12, r.Header.DataFormat&0xfff
			if c.Rules != nil || format != RuleCountersFormat || ent == 0 || (d.Enterprise != 0 && d.Enterprise != ent) {
				return c, errUnrepresentable
			}
			rc, err := ParseRuleCounters(data.Data)
			if err != nil {
				return c, fmt.Errorf("%w: %w", errUnrepresentable, err)
			}
			for _, rule := range rc.Rules {
				if cutName(rule.Name) != rule.Name {
					return c, errUnrepresentable
				}
			}
			d.Enterprise = ent
			c.Rules = &rc
		default:
			return c, fmt.Errorf("counter record %d: %w", r.Header.DataFormat, errUnrepresentable)
		}
	}
	return c, nil
}

// randomDatagram makes a datagram of every field this package writes from
// a seed.
func randomDatagram(seed uint64, flows, counters int) *Datagram {
	r := rand.New(rand.NewPCG(seed, seed>>7^0x9e3779b97f4a7c15))
	d := &Datagram{
		SubAgentID: r.Uint32(), Sequence: r.Uint32(), Uptime: r.Uint32(),
		Expanded: r.IntN(2) == 1, Enterprise: 1 + r.Uint32N(MaxEnterprise),
	}
	if r.IntN(2) == 0 {
		var a [4]byte
		fillBytes(r, a[:])
		d.Agent = netip.AddrFrom4(a)
	} else {
		var a [16]byte
		fillBytes(r, a[:])
		d.Agent = netip.AddrFrom16(a)
	}
	index := func() uint32 {
		if d.Expanded {
			return r.Uint32()
		}
		return r.Uint32N(MaxCompactIndex + 1)
	}
	iface := func() Interface {
		if d.Expanded {
			return Interface{Format: r.Uint32(), Value: r.Uint32()}
		}
		return Interface{Format: r.Uint32N(4), Value: r.Uint32N(1 << 30)}
	}
	for range flows {
		h := make([]byte, r.IntN(MaxHeaderBytes+1))
		fillBytes(r, h)
		d.Flows = append(d.Flows, FlowSample{
			Sequence: r.Uint32(), Source: index(), SamplingRate: r.Uint32(), SamplePool: r.Uint32(),
			Drops: r.Uint32(), Input: iface(), Output: iface(),
			Header: RawHeader{Protocol: r.Uint32(), FrameLength: r.Uint32(), Stripped: r.Uint32(), Header: h},
		})
	}
	for range counters {
		c := CounterSample{Sequence: r.Uint32(), Source: index()}
		if r.IntN(3) > 0 {
			c.Interface = &IfCounters{
				Index: r.Uint32(), Type: r.Uint32(), Speed: r.Uint64(), Direction: r.Uint32(), Status: r.Uint32(),
				InOctets: r.Uint64(), InUcast: r.Uint32(), InMulticast: r.Uint32(), InBroadcast: r.Uint32(),
				InDiscards: r.Uint32(), InErrors: r.Uint32(), InUnknown: r.Uint32(), OutOctets: r.Uint64(),
				OutUcast: r.Uint32(), OutMulticast: r.Uint32(), OutBroadcast: r.Uint32(),
				OutDiscards: r.Uint32(), OutErrors: r.Uint32(), Promiscuous: r.Uint32(),
			}
		}
		if r.IntN(3) > 0 {
			rc := &RuleCounters{Total: r.Uint32()}
			for range r.IntN(8) {
				name := make([]byte, r.IntN(MaxRuleName+1))
				for i := range name {
					name[i] = byte('a' + r.IntN(26))
				}
				rc.Rules = append(rc.Rules, Rule{Index: r.Uint32(), Action: r.Uint32(), Packets: r.Uint64(),
					Bytes: r.Uint64(), Name: string(name)})
			}
			c.Rules = rc
		}
		d.Counters = append(d.Counters, c)
	}
	return d
}

func fillBytes(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}
