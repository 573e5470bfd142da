package sflow

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultHeaderBytes     = 128
	DefaultMaxDatagram     = 1400
	DefaultQueue           = 4096
	DefaultFlushInterval   = time.Second
	DefaultCounterInterval = 10 * time.Second
	// DefaultEnterprise is the enterprise number of the rule counter record
	// while L4Drop has no IANA Private Enterprise Number of its own: 32473
	// is reserved for documentation (RFC 5612), so no vendor's records use
	// it and no collector decodes it as something else.
	DefaultEnterprise = 32473
)

// MaxHeaderBytes is the most packet bytes a flow sample can carry here.
const MaxHeaderBytes = 256

// fcsLen is the Ethernet frame check sequence, which XDP never sees: sFlow
// frame lengths include it and count it as stripped.
const fcsLen = 4

// ErrConfig is returned by NewExporter for a configuration it cannot use.
var ErrConfig = errors.New("sflow: bad configuration")

// ErrRunning is returned by Run when the exporter runs already.
var ErrRunning = errors.New("sflow: exporter runs already")

// Counters is what a counter sample reports: the interface's counters and
// the rule set's per-rule counters, either of which may be absent.
type Counters struct {
	Interface *IfCounters
	Rules     []Rule
}

// SamplerStats is the state of the sampler feeding an exporter.
type SamplerStats struct {
	// Pool counts the packets the sampler saw (sampled or not).
	Pool uint64
	// Lost counts samples the sampler took but could not deliver (a full
	// kernel buffer).
	Lost uint64
}

// Config configures an Exporter.
type Config struct {
	// Collectors are the HOST:PORT addresses datagrams go to (each gets
	// every datagram). At least one.
	Collectors []string
	// Agent is the agent address datagrams carry (AgentAddress finds the
	// interface's first IPv4 address).
	Agent netip.Addr
	// SubAgentID tells the datagram streams of one agent apart, one per
	// interface.
	SubAgentID uint32
	// IfIndex is the interface sampled: the data source and the input of
	// every sample. Above MaxCompactIndex the expanded formats are used.
	IfIndex uint32
	// SamplingRate is one packet in SamplingRate, at least 1; see
	// SetSamplingRate.
	SamplingRate uint32
	// HeaderBytes is the most bytes of each packet a sample carries,
	// 1-MaxHeaderBytes; 0 means DefaultHeaderBytes.
	HeaderBytes int
	// MaxDatagram is the largest datagram sent; 0 means DefaultMaxDatagram.
	MaxDatagram int
	// Queue is how many samples wait for the sender before Sample drops
	// them; 0 means DefaultQueue.
	Queue int
	// FlushInterval is the longest a sample waits for its datagram to fill;
	// 0 means DefaultFlushInterval.
	FlushInterval time.Duration
	// CounterInterval is the time between counter samples; 0 means
	// DefaultCounterInterval.
	CounterInterval time.Duration
	// Counters, when set, is called every CounterInterval (and when Run
	// starts) for the counter sample. It runs on the sender's goroutine.
	Counters func() (Counters, error)
	// Sampler, when set, is called every FlushInterval for the sample
	// pool and the samples lost before the exporter; without it the pool
	// grows by SamplingRate with each sample.
	Sampler func() (SamplerStats, error)
	// Enterprise is the enterprise number of the rule counter record;
	// 0 means DefaultEnterprise.
	Enterprise uint32
	// Logger receives send and counter errors; nil means slog.Default().
	Logger *slog.Logger
}

// Packet is a sampled packet for Sample.
type Packet struct {
	Frame   []byte // the Ethernet frame's first bytes
	Length  int    // the frame's length, as XDP saw it (without FCS)
	Dropped bool   // dropped by a rule: the sample's output is "discarded, ACL"
}

// Stats are an exporter's counts since it was made.
type Stats struct {
	Samples        uint64 // flow samples put in datagrams
	SamplesLost    uint64 // flow samples dropped by Sample: queue full
	CounterSamples uint64 // counter samples put in datagrams
	CounterErrors  uint64 // Counters or Sampler calls that failed
	Datagrams      uint64 // datagrams sent, per collector
	DatagramsLost  uint64 // datagrams a send failed for, per collector
}

// Exporter sends samples as sFlow v5 to collectors. Sample is safe for
// concurrent use and never blocks; Run does the encoding and sending.
type Exporter struct {
	cfg        Config
	collectors []netip.AddrPort
	expanded   bool
	log        *slog.Logger
	queue      chan queued
	rate       atomic.Uint32
	start      time.Time
	running    atomic.Bool

	samples, samplesLost, counterSamples, counterErrors, datagrams, datagramsLost atomic.Uint64

	// Owned by Run.
	conns       []*net.UDPConn
	warned      []time.Time // last warning about a collector's failing sends
	lostSince   []uint64    // datagrams lost to it since
	buf         []byte
	count       uint32
	datagramSeq uint32
	flowSeq     uint32
	counterSeq  uint32
	pool        uint64 // of the last sample
	polled      uint64 // the sampler's count when last asked
	lost        uint64 // reported by Sampler
}

type queued struct {
	n       uint16
	dropped bool
	length  uint32
	data    [MaxHeaderBytes]byte
}

// NewExporter checks cfg, fills in its defaults and resolves the
// collectors; Run starts sending.
func NewExporter(cfg Config) (*Exporter, error) {
	if len(cfg.Collectors) == 0 {
		return nil, fmt.Errorf("%w: no collector", ErrConfig)
	}
	if !cfg.Agent.IsValid() || cfg.Agent.IsUnspecified() {
		return nil, fmt.Errorf("%w: agent address %q: need an IPv4 or IPv6 address", ErrConfig, cfg.Agent)
	}
	cfg.Agent = cfg.Agent.Unmap()
	if cfg.SamplingRate == 0 {
		return nil, fmt.Errorf("%w: sampling rate 0: need one in N, N >= 1", ErrConfig)
	}
	if cfg.IfIndex == 0 {
		return nil, fmt.Errorf("%w: ifindex 0", ErrConfig)
	}
	if cfg.IfIndex > 1<<30-1 {
		return nil, fmt.Errorf("%w: ifindex %d above 2^30-1", ErrConfig, cfg.IfIndex)
	}
	if cfg.HeaderBytes == 0 {
		cfg.HeaderBytes = DefaultHeaderBytes
	}
	if cfg.HeaderBytes < 1 || cfg.HeaderBytes > MaxHeaderBytes {
		return nil, fmt.Errorf("%w: header bytes %d not in 1-%d", ErrConfig, cfg.HeaderBytes, MaxHeaderBytes)
	}
	if cfg.Enterprise == 0 {
		cfg.Enterprise = DefaultEnterprise
	}
	if cfg.Enterprise > MaxEnterprise {
		return nil, fmt.Errorf("%w: enterprise %d above %d", ErrConfig, cfg.Enterprise, MaxEnterprise)
	}
	e := &Exporter{cfg: cfg, expanded: cfg.IfIndex > MaxCompactIndex, start: time.Now()}
	if cfg.MaxDatagram == 0 {
		cfg.MaxDatagram = DefaultMaxDatagram
	}
	// A datagram must hold a full flow sample, and a counter sample with
	// the interface counters and one rule of the longest name.
	need := headerLen(cfg.Agent) + max(flowSampleLen(cfg.HeaderBytes, e.expanded),
		counterSampleLen(&CounterSample{Interface: &IfCounters{}, Rules: &RuleCounters{Rules: make([]Rule, 1)}}, e.expanded)+MaxRuleName)
	if cfg.MaxDatagram < need || cfg.MaxDatagram > 65507 {
		return nil, fmt.Errorf("%w: max datagram %d not in %d-65507", ErrConfig, cfg.MaxDatagram, need)
	}
	if cfg.Queue == 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.Queue < 0 {
		return nil, fmt.Errorf("%w: queue %d", ErrConfig, cfg.Queue)
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.CounterInterval == 0 {
		cfg.CounterInterval = DefaultCounterInterval
	}
	if cfg.FlushInterval < 0 || cfg.CounterInterval < 0 {
		return nil, fmt.Errorf("%w: negative interval", ErrConfig)
	}
	for _, c := range cfg.Collectors {
		a, err := net.ResolveUDPAddr("udp", c)
		if err != nil {
			return nil, fmt.Errorf("%w: collector %q: %w", ErrConfig, c, err)
		}
		ap := a.AddrPort()
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
			return nil, fmt.Errorf("%w: collector %q: need HOST:PORT", ErrConfig, c)
		}
		e.collectors = append(e.collectors, ap)
	}
	e.log = cfg.Logger
	if e.log == nil {
		e.log = slog.Default()
	}
	e.cfg = cfg
	e.queue = make(chan queued, cfg.Queue)
	e.rate.Store(cfg.SamplingRate)
	return e, nil
}

// Collectors returns the resolved collector addresses.
func (e *Exporter) Collectors() []netip.AddrPort {
	return append([]netip.AddrPort(nil), e.collectors...)
}

// SetSamplingRate changes the sampling rate samples report from now on (a
// reloaded rule set with another rate); 0 is ignored.
func (e *Exporter) SetSamplingRate(rate uint32) {
	if rate != 0 {
		e.rate.Store(rate)
	}
}

// Sample queues a sampled packet and reports whether it found room; it
// never blocks. It copies what it keeps of p.Frame.
func (e *Exporter) Sample(p Packet) bool {
	var q queued
	n := min(len(p.Frame), e.cfg.HeaderBytes)
	copy(q.data[:n], p.Frame)
	q.n = uint16(n)
	q.dropped = p.Dropped
	q.length = uint32(max(min(p.Length, 1<<32-1-fcsLen), len(p.Frame), 0))
	select {
	case e.queue <- q:
		return true
	default:
		e.samplesLost.Add(1)
		return false
	}
}

// Stats returns the exporter's counts.
func (e *Exporter) Stats() Stats {
	return Stats{
		Samples: e.samples.Load(), SamplesLost: e.samplesLost.Load(),
		CounterSamples: e.counterSamples.Load(), CounterErrors: e.counterErrors.Load(),
		Datagrams: e.datagrams.Load(), DatagramsLost: e.datagramsLost.Load(),
	}
}

// Run sends samples until ctx is done, then sends what is queued and
// returns nil. It sends a counter sample when it starts and every
// CounterInterval, and no sample waits more than FlushInterval.
func (e *Exporter) Run(ctx context.Context) error {
	if !e.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer e.running.Store(false)
	// A collector without a route yet is dialled again at each send: its
	// datagrams count as lost meanwhile.
	e.conns = make([]*net.UDPConn, len(e.collectors))
	e.warned = make([]time.Time, len(e.collectors))
	e.lostSince = make([]uint64, len(e.collectors))
	for i := range e.collectors {
		if err := e.dial(i); err != nil {
			e.warn(i, err)
		}
	}
	defer e.closeConns()
	e.buf = make([]byte, 0, e.cfg.MaxDatagram)
	e.reset()

	flush := time.NewTimer(e.cfg.FlushInterval)
	flush.Stop()
	defer flush.Stop()
	poll := time.NewTicker(e.cfg.FlushInterval)
	defer poll.Stop()
	var counters <-chan time.Time
	if e.cfg.Counters != nil {
		t := time.NewTicker(e.cfg.CounterInterval)
		defer t.Stop()
		counters = t.C
		e.pollSampler()
		e.addCounters()
	}
	// The flush timer runs while the datagram holds samples, so that none
	// waits longer than FlushInterval; a datagram sent because it was full
	// leaves it running for the next.
	armed := false
	for {
		select {
		case q := <-e.queue:
			e.addFlow(&q)
			// Take what else is queued without going through select.
		drain:
			for range cap(e.queue) {
				select {
				case q := <-e.queue:
					e.addFlow(&q)
				default:
					break drain
				}
			}
		case <-flush.C:
			armed = false
			e.send()
		case <-poll.C:
			e.pollSampler()
		case <-counters:
			e.pollSampler()
			e.addCounters()
		case <-ctx.Done():
			for len(e.queue) > 0 {
				q := <-e.queue
				e.addFlow(&q)
			}
			e.send()
			return nil
		}
		if e.count > 0 && !armed {
			flush.Reset(e.cfg.FlushInterval)
			armed = true
		}
	}
}

func (e *Exporter) closeConns() {
	for _, c := range e.conns {
		if c != nil {
			c.Close()
		}
	}
	e.conns, e.warned, e.lostSince = nil, nil, nil
}

// reset starts a datagram whose sequence, uptime and sample count send
// fills in.
func (e *Exporter) reset() {
	e.buf = appendHeader(e.buf[:0], e.cfg.Agent, e.cfg.SubAgentID, 0, 0, 0)
	e.count = 0
}

// room makes room for n more bytes in the datagram.
func (e *Exporter) room(n int) {
	if len(e.buf)+n > e.cfg.MaxDatagram {
		e.send()
	}
}

func (e *Exporter) addFlow(q *queued) {
	e.room(flowSampleLen(int(q.n), e.expanded))
	e.flowSeq++
	rate := e.rate.Load()
	e.pool = max(e.pool+uint64(rate), e.polled)
	out := Interface{}
	if q.dropped {
		out = Discarded(DiscardACL)
	}
	s := FlowSample{
		Sequence: e.flowSeq, Source: e.cfg.IfIndex, SamplingRate: rate,
		SamplePool: uint32(e.pool), Drops: uint32(e.lost + e.samplesLost.Load()),
		Input: Interface{Value: e.cfg.IfIndex}, Output: out,
		Header: RawHeader{
			Protocol: HeaderProtocolEthernet, FrameLength: q.length + fcsLen,
			Stripped: fcsLen, Header: q.data[:q.n],
		},
	}
	b, err := appendFlowSample(e.buf, &s, e.expanded)
	if err != nil {
		// NewExporter's checks make this unreachable. e.buf keeps its
		// length: the half-written sample is not sent.
		e.log.Error("sflow: encode flow sample", "err", err)
		return
	}
	e.buf = b
	e.count++
	e.samples.Add(1)
}

// addCounters adds the counter sample, split into several when the rule
// counters do not fit one datagram.
func (e *Exporter) addCounters() {
	c, err := e.cfg.Counters()
	if err != nil {
		e.counterErrors.Add(1)
		e.log.Warn("sflow: counters", "err", err)
		return
	}
	if c.Interface == nil && len(c.Rules) == 0 {
		return
	}
	limit := e.cfg.MaxDatagram - headerLen(e.cfg.Agent)
	total := uint32(len(c.Rules))
	rules := c.Rules
	s := CounterSample{Source: e.cfg.IfIndex, Interface: c.Interface}
	for first := true; first || len(rules) > 0; first = false {
		if len(c.Rules) > 0 {
			s.Rules = &RuleCounters{Total: total}
			n := counterSampleLen(&s, e.expanded)
			k := 0
			for k < len(rules) && n+ruleLen(rules[k].Name) <= limit {
				n += ruleLen(rules[k].Name)
				k++
			}
			// NewExporter made room for a rule; never loop forever.
			k = max(k, min(1, len(rules)))
			s.Rules.Rules, rules = rules[:k], rules[k:]
		}
		e.room(counterSampleLen(&s, e.expanded))
		e.counterSeq++
		s.Sequence = e.counterSeq
		b, err := appendCounterSample(e.buf, &s, e.expanded, e.cfg.Enterprise)
		if err != nil {
			e.log.Error("sflow: encode counter sample", "err", err)
			return
		}
		e.buf = b
		e.count++
		e.counterSamples.Add(1)
		s.Interface = nil
	}
}

func (e *Exporter) pollSampler() {
	if e.cfg.Sampler == nil {
		return
	}
	st, err := e.cfg.Sampler()
	if err != nil {
		e.counterErrors.Add(1)
		e.log.Warn("sflow: sampler stats", "err", err)
		return
	}
	e.polled = st.Pool
	e.lost = st.Lost
}

// send sends the datagram to every collector and starts the next.
func (e *Exporter) send() {
	if e.count == 0 {
		return
	}
	e.datagramSeq++
	h := headerLen(e.cfg.Agent)
	binary.BigEndian.PutUint32(e.buf[h-patchSequence:], e.datagramSeq)
	binary.BigEndian.PutUint32(e.buf[h-patchUptime:], uint32(time.Since(e.start).Milliseconds()))
	binary.BigEndian.PutUint32(e.buf[h-patchCount:], e.count)
	deadline := time.Now().Add(e.cfg.FlushInterval)
	for i := range e.conns {
		if e.conns[i] == nil {
			if err := e.dial(i); err != nil {
				e.datagramsLost.Add(1)
				e.lostSince[i]++
				e.warn(i, err)
				continue
			}
		}
		c := e.conns[i]
		c.SetWriteDeadline(deadline)
		if _, err := c.Write(e.buf); err != nil {
			e.datagramsLost.Add(1)
			e.lostSince[i]++
			e.warn(i, err)
			continue
		}
		e.datagrams.Add(1)
	}
	e.reset()
}

// dial connects the socket of collector i.
func (e *Exporter) dial(i int) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(e.collectors[i]))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	e.conns[i] = conn
	return nil
}

// warn logs a failure to reach collector i, at most once a minute: a
// collector that is down refuses every other datagram (its ICMP error
// fails the next send).
func (e *Exporter) warn(i int, err error) {
	if time.Since(e.warned[i]) >= time.Minute {
		e.log.Warn("sflow: send failed", "collector", e.collectors[i].String(), "err", err,
			"lost_since_last_warning", e.lostSince[i])
		e.warned[i] = time.Now()
		e.lostSince[i] = 0
	}
}
