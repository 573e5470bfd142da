package sflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unicode/utf8"
)

// Version is the sFlow version this package speaks.
const Version = 5

// Sample and record formats, enterprise 0 (sflow.org), as the data_format
// word carries them: enterprise in the top 20 bits, format in the low 12.
const (
	formatFlowSample            = 1
	formatCounterSample         = 2
	formatFlowSampleExpanded    = 3
	formatCounterSampleExpanded = 4

	formatRawHeader  = 1 // flow record: sampled_header
	formatIfCounters = 1 // counter record: if_counters
)

// HeaderProtocolEthernet is the sampled_header protocol of Ethernet frames
// (ETHERNET-ISO88023).
const HeaderProtocolEthernet = 1

// Interface formats, the top two bits of a compact interface word or the
// first word of an expanded one.
const (
	InterfaceIndex     = 0 // Value is an ifIndex (0: unknown)
	InterfaceDiscarded = 1 // Value is a discard reason code
	InterfaceMultiple  = 2 // Value is a number of interfaces
)

// Discard reason codes (format 1 output interfaces) above the ICMP
// destination unreachable codes 0-255.
const (
	DiscardUnknown    = 256
	DiscardTTL        = 257
	DiscardACL        = 258
	DiscardNoBuffer   = 259
	DiscardRED        = 260
	DiscardRateLimit  = 261
	DiscardPacketSize = 262
)

// MaxCompactIndex is the largest ifIndex (and data source index) the
// compact sample formats can carry; an agent with a larger one must use the
// expanded formats for every sample.
const MaxCompactIndex = 1<<24 - 1

// MaxEnterprise is the largest enterprise number a data_format word holds.
const MaxEnterprise = 1<<20 - 1

// MaxRuleName is the most bytes of a rule name a rule counter record
// carries; longer names are cut at a UTF-8 boundary.
const MaxRuleName = 64

// RuleCountersFormat is the format number of L4Drop's rule counter record
// within its enterprise (see the package documentation).
const RuleCountersFormat = 1

// ErrRange is returned when a value does not fit its field: an ifIndex
// beyond the compact formats, an enterprise number beyond 20 bits.
var ErrRange = errors.New("value out of range")

// Interface is the input or output interface of a flow sample.
type Interface struct {
	Format uint32 // InterfaceIndex, InterfaceDiscarded or InterfaceMultiple
	Value  uint32
}

// Discarded is the output interface of a packet dropped for reason.
func Discarded(reason uint32) Interface {
	return Interface{Format: InterfaceDiscarded, Value: reason}
}

// compact encodes i as the 32-bit interface word of the compact formats.
func (i Interface) compact() (uint32, error) {
	if i.Format > 3 || i.Value > 1<<30-1 {
		return 0, fmt.Errorf("interface format %d value %d: %w", i.Format, i.Value, ErrRange)
	}
	return i.Format<<30 | i.Value, nil
}

// RawHeader is a sampled_header flow record: the first bytes of a packet.
type RawHeader struct {
	Protocol    uint32 // HeaderProtocolEthernet, ...
	FrameLength uint32 // length of the packet on the wire, FCS included
	Stripped    uint32 // bytes removed before Header (the FCS: 4)
	Header      []byte
}

// FlowSample is a sampled packet.
type FlowSample struct {
	Sequence     uint32 // per source, incremented with each flow sample
	Source       uint32 // ifIndex of the data source (source type 0)
	SamplingRate uint32 // one packet in SamplingRate
	SamplePool   uint32 // packets that could have been sampled
	Drops        uint32 // samples lost for lack of resources
	Input        Interface
	Output       Interface
	Header       RawHeader
}

// IfCounters is the generic interface counters record (if_counters, RFC
// 2233 names). Counters a source cannot tell are all ones (^uint32(0)).
type IfCounters struct {
	Index       uint32
	Type        uint32 // IANAifType: 6 ethernetCsmacd
	Speed       uint64 // bits per second; 0 unknown
	Direction   uint32 // 0 unknown, 1 full-duplex, 2 half-duplex, 3 in, 4 out
	Status      uint32 // bit 0 admin up, bit 1 operationally up
	InOctets    uint64
	InUcast     uint32
	InMulticast uint32
	InBroadcast uint32
	InDiscards  uint32
	InErrors    uint32
	InUnknown   uint32 // unknown protocols
	OutOctets   uint64
	OutUcast    uint32
	OutMulticast,
	OutBroadcast uint32
	OutDiscards uint32
	OutErrors   uint32
	Promiscuous uint32 // 1 true, 2 false (SNMP TruthValue)
}

// ifCountersLen is the encoded size of IfCounters.
const ifCountersLen = 88

// Rule is one rule's counters in a rule counter record.
type Rule struct {
	Index   uint32 // position in the rule set; NoRule for unmatched packets
	Action  uint32 // XDP action the rule takes: 1 drop, 2 pass
	Packets uint64 // matched since the rule set was loaded
	Bytes   uint64
	Name    string // cut to MaxRuleName bytes
}

// NoRule is the Index of the entry counting packets no rule matched.
const NoRule = ^uint32(0)

// RuleCounters is L4Drop's enterprise counter record: counters of Rules,
// part of a rule set of Total entries (the unmatched entry included) that
// may span several records.
type RuleCounters struct {
	Total uint32
	Rules []Rule
}

// CounterSample is a set of counters of one data source.
type CounterSample struct {
	Sequence  uint32 // per source, incremented with each counter sample
	Source    uint32 // ifIndex of the data source (source type 0)
	Interface *IfCounters
	Rules     *RuleCounters
}

// Datagram is an sFlow v5 datagram.
type Datagram struct {
	Agent      netip.Addr // IPv4 or IPv6; the zero Addr encodes as unknown
	SubAgentID uint32
	Sequence   uint32 // per sub-agent, incremented with each datagram
	Uptime     uint32 // milliseconds
	// Expanded selects the expanded sample formats (3 and 4), which an
	// agent with any ifIndex above MaxCompactIndex must use throughout.
	Expanded bool
	// Enterprise is the enterprise number of rule counter records.
	Enterprise uint32
	Counters   []CounterSample
	Flows      []FlowSample
}

// AppendBinary appends the encoded datagram to b: its counter samples, then
// its flow samples.
func (d *Datagram) AppendBinary(b []byte) ([]byte, error) {
	b = appendHeader(b, d.Agent, d.SubAgentID, d.Sequence, d.Uptime, uint32(len(d.Counters)+len(d.Flows)))
	var err error
	for i := range d.Counters {
		if b, err = appendCounterSample(b, &d.Counters[i], d.Expanded, d.Enterprise); err != nil {
			return b, fmt.Errorf("counter sample %d: %w", i, err)
		}
	}
	for i := range d.Flows {
		if b, err = appendFlowSample(b, &d.Flows[i], d.Expanded); err != nil {
			return b, fmt.Errorf("flow sample %d: %w", i, err)
		}
	}
	return b, nil
}

// MarshalBinary encodes the datagram.
func (d *Datagram) MarshalBinary() ([]byte, error) { return d.AppendBinary(nil) }

// headerLen is the size of the datagram header before the first sample.
func headerLen(agent netip.Addr) int {
	n := 6 * 4 // version, address type, sub-agent, sequence, uptime, count
	if agent.Is4() {
		n += 4
	} else if agent.IsValid() {
		n += 16
	}
	return n
}

// Offsets from the end of the header of the fields an exporter patches just
// before sending.
const (
	patchSequence = 12
	patchUptime   = 8
	patchCount    = 4
)

func appendHeader(b []byte, agent netip.Addr, subAgent, seq, uptime, count uint32) []byte {
	b = be32(b, Version)
	switch {
	case agent.Is4():
		b = be32(b, 1)
		a := agent.As4()
		b = append(b, a[:]...)
	case agent.IsValid():
		b = be32(b, 2)
		a := agent.As16()
		b = append(b, a[:]...)
	default:
		b = be32(b, 0)
	}
	b = be32(b, subAgent)
	b = be32(b, seq)
	b = be32(b, uptime)
	return be32(b, count)
}

// flowSampleLen is the encoded size of a flow sample with a header of n
// bytes, its sample_record envelope included.
func flowSampleLen(n int, expanded bool) int {
	l := 8 + 8*4 + 8 + 4*4 + pad4(n)
	if expanded {
		l += 3 * 4
	}
	return l
}

func appendFlowSample(b []byte, s *FlowSample, expanded bool) ([]byte, error) {
	format := uint32(formatFlowSample)
	if expanded {
		format = formatFlowSampleExpanded
	}
	b = be32(b, format)
	b, lenAt := reserve(b)
	start := len(b)
	b = be32(b, s.Sequence)
	if expanded {
		b = be32(b, 0) // source type: ifIndex
		b = be32(b, s.Source)
	} else {
		if s.Source > MaxCompactIndex {
			return b, fmt.Errorf("source ifIndex %d in compact format: %w", s.Source, ErrRange)
		}
		b = be32(b, s.Source)
	}
	b = be32(b, s.SamplingRate)
	b = be32(b, s.SamplePool)
	b = be32(b, s.Drops)
	for _, i := range []Interface{s.Input, s.Output} {
		if expanded {
			b = be32(b, i.Format)
			b = be32(b, i.Value)
			continue
		}
		w, err := i.compact()
		if err != nil {
			return b, err
		}
		b = be32(b, w)
	}
	b = be32(b, 1) // one flow record
	b = be32(b, formatRawHeader)
	h := &s.Header
	b = be32(b, uint32(4*4+pad4(len(h.Header))))
	b = be32(b, h.Protocol)
	b = be32(b, h.FrameLength)
	b = be32(b, h.Stripped)
	b = appendOpaque(b, h.Header)
	setLen(b, lenAt, start)
	return b, nil
}

// counterSampleLen is the encoded size of a counter sample, its
// sample_record envelope included.
func counterSampleLen(s *CounterSample, expanded bool) int {
	n := 8 + 3*4
	if expanded {
		n += 4
	}
	if s.Interface != nil {
		n += 8 + ifCountersLen
	}
	if s.Rules != nil {
		n += 8 + 2*4
		for i := range s.Rules.Rules {
			n += ruleLen(s.Rules.Rules[i].Name)
		}
	}
	return n
}

func ruleLen(name string) int { return 6*4 + 4 + pad4(len(cutName(name))) }

func appendCounterSample(b []byte, s *CounterSample, expanded bool, enterprise uint32) ([]byte, error) {
	if enterprise > MaxEnterprise {
		return b, fmt.Errorf("enterprise %d: %w", enterprise, ErrRange)
	}
	format := uint32(formatCounterSample)
	if expanded {
		format = formatCounterSampleExpanded
	}
	b = be32(b, format)
	b, lenAt := reserve(b)
	start := len(b)
	b = be32(b, s.Sequence)
	if expanded {
		b = be32(b, 0)
		b = be32(b, s.Source)
	} else {
		if s.Source > MaxCompactIndex {
			return b, fmt.Errorf("source ifIndex %d in compact format: %w", s.Source, ErrRange)
		}
		b = be32(b, s.Source)
	}
	var records uint32
	if s.Interface != nil {
		records++
	}
	if s.Rules != nil {
		records++
	}
	b = be32(b, records)
	if c := s.Interface; c != nil {
		b = be32(b, formatIfCounters)
		b = be32(b, ifCountersLen)
		b = be32(b, c.Index)
		b = be32(b, c.Type)
		b = be64(b, c.Speed)
		b = be32(b, c.Direction)
		b = be32(b, c.Status)
		b = be64(b, c.InOctets)
		for _, v := range []uint32{c.InUcast, c.InMulticast, c.InBroadcast, c.InDiscards, c.InErrors, c.InUnknown} {
			b = be32(b, v)
		}
		b = be64(b, c.OutOctets)
		for _, v := range []uint32{c.OutUcast, c.OutMulticast, c.OutBroadcast, c.OutDiscards, c.OutErrors, c.Promiscuous} {
			b = be32(b, v)
		}
	}
	if r := s.Rules; r != nil {
		b = be32(b, enterprise<<12|RuleCountersFormat)
		var recAt int
		b, recAt = reserve(b)
		recStart := len(b)
		b = be32(b, r.Total)
		b = be32(b, uint32(len(r.Rules)))
		for i := range r.Rules {
			rule := &r.Rules[i]
			b = be32(b, rule.Index)
			b = be32(b, rule.Action)
			b = be64(b, rule.Packets)
			b = be64(b, rule.Bytes)
			b = appendOpaque(b, []byte(cutName(rule.Name)))
		}
		setLen(b, recAt, recStart)
	}
	setLen(b, lenAt, start)
	return b, nil
}

// ErrFormat is returned by ParseRuleCounters for data that is not a rule
// counter record.
var ErrFormat = errors.New("sflow: malformed record")

// ParseRuleCounters decodes the counter_data of a rule counter record, as a
// collector hands it over for an enterprise record it does not know.
func ParseRuleCounters(data []byte) (RuleCounters, error) {
	var r RuleCounters
	if len(data) < 8 {
		return r, fmt.Errorf("%w: rule counters of %d bytes", ErrFormat, len(data))
	}
	r.Total = binary.BigEndian.Uint32(data)
	n := binary.BigEndian.Uint32(data[4:])
	data = data[8:]
	// Each rule takes at least 28 bytes: no allocation beyond the data.
	if uint64(n)*28 > uint64(len(data)) {
		return r, fmt.Errorf("%w: %d rules in %d bytes", ErrFormat, n, len(data))
	}
	r.Rules = make([]Rule, 0, n)
	for i := range n {
		if len(data) < 28 {
			return r, fmt.Errorf("%w: rule %d truncated", ErrFormat, i)
		}
		rule := Rule{
			Index:   binary.BigEndian.Uint32(data),
			Action:  binary.BigEndian.Uint32(data[4:]),
			Packets: binary.BigEndian.Uint64(data[8:]),
			Bytes:   binary.BigEndian.Uint64(data[16:]),
		}
		l := binary.BigEndian.Uint32(data[24:])
		data = data[28:]
		if l > MaxRuleName || int(l) > len(data) || pad4(int(l)) > len(data) {
			return r, fmt.Errorf("%w: rule %d name of %d bytes", ErrFormat, i, l)
		}
		rule.Name = string(data[:l])
		data = data[pad4(int(l)):]
		r.Rules = append(r.Rules, rule)
	}
	if len(data) != 0 {
		return r, fmt.Errorf("%w: %d bytes after the rules", ErrFormat, len(data))
	}
	return r, nil
}

// cutName cuts a rule name to MaxRuleName bytes without splitting a UTF-8
// sequence.
func cutName(s string) string {
	if len(s) <= MaxRuleName {
		return s
	}
	n := MaxRuleName
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func be32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func be64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

func pad4(n int) int { return (n + 3) &^ 3 }

// appendOpaque appends an XDR variable-length opaque: length, bytes, zero
// padding to a multiple of four.
func appendOpaque(b, p []byte) []byte {
	b = be32(b, uint32(len(p)))
	b = append(b, p...)
	for range pad4(len(p)) - len(p) {
		b = append(b, 0)
	}
	return b
}

// reserve appends a length word to fill in later with setLen.
func reserve(b []byte) ([]byte, int) { return append(b, 0, 0, 0, 0), len(b) }

func setLen(b []byte, at, start int) {
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-start))
}
