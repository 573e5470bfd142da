package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4drop/l4drop/internal/netns"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/sflow"
)

// SFlow is the component that sends every sample as an sFlow v5 flow
// sample, with interface and per-rule counter samples, to collectors.
type SFlow struct {
	collectors []string
	agent      string
	iface      string

	do     func(func(h *l4drop.Handle) error) error
	link   *sflow.Link
	exp    *sflow.Exporter
	cancel context.CancelFunc
	done   chan error
}

// NewSFlow returns the sFlow component: collectors are HOST:PORT
// addresses; agent is the agent address ("" for the interface's first
// IPv4 address). Nothing is opened until Start.
func NewSFlow(collectors []string, agent string) (*SFlow, error) {
	if len(collectors) == 0 {
		return nil, fmt.Errorf("%w: --sflow: no collector", ErrConfig)
	}
	for _, c := range collectors {
		if _, _, err := net.SplitHostPort(c); err != nil {
			return nil, fmt.Errorf("%w: --sflow %q: %w", ErrConfig, c, err)
		}
	}
	if agent != "" {
		if _, err := netip.ParseAddr(agent); err != nil {
			return nil, fmt.Errorf("%w: --sflow-agent %q: %w", ErrConfig, agent, err)
		}
	}
	return &SFlow{collectors: collectors, agent: agent}, nil
}

// Name implements Component.
func (s *SFlow) Name() string { return "sflow" }

// Start implements Component.
func (s *SFlow) Start(ctx context.Context, d *Daemon) error {
	return s.StartWith(ctx, d.Config().Load, d.Do, d.Logger())
}

// StartWith starts the exporter for the rule set loaded on load.Iface (in
// load.Netns) without a daemon: do runs a function on the loaded set, as
// Daemon.Do does. For one-off exports (l4drop samples --sflow).
func (s *SFlow) StartWith(ctx context.Context, load l4drop.LoadOptions, do func(func(h *l4drop.Handle) error) error, log *slog.Logger) error {
	s.do, s.iface = do, load.Iface
	open := func() error {
		ifi, err := net.InterfaceByName(load.Iface)
		if err != nil {
			return err
		}
		s.link, err = sflow.OpenLink(ifi.Index)
		return err
	}
	var err error
	if load.Netns == "" {
		err = open()
	} else {
		var n *netns.NS
		if n, err = netns.Open(load.Netns); err == nil {
			err = n.Do(open)
			n.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("sflow: interface %s: %w", load.Iface, err)
	}
	var agent netip.Addr
	if s.agent != "" {
		agent = netip.MustParseAddr(s.agent) // checked by NewSFlow
	} else if agent, err = s.link.AgentAddress(); err != nil {
		s.link.Close()
		return fmt.Errorf("sflow: agent address of %s: %w (give --sflow-agent IP)", load.Iface, err)
	}
	var rate uint32
	if err := do(func(h *l4drop.Handle) error {
		st, err := h.Status(0)
		if err == nil {
			rate = st.SampleRate
		}
		return err
	}); err != nil {
		s.link.Close()
		return fmt.Errorf("sflow: %w", err)
	}
	if rate == 0 {
		s.link.Close()
		return errors.New("sflow: sampling is off (sample_rate: 0 in the rule set)")
	}
	s.exp, err = sflow.NewExporter(sflow.Config{
		Collectors: s.collectors, Agent: agent,
		SubAgentID: uint32(s.link.Index()), IfIndex: uint32(s.link.Index()), SamplingRate: rate,
		Counters: s.counters, Sampler: s.sampler, Logger: log,
	})
	if err != nil {
		s.link.Close()
		return fmt.Errorf("sflow: %w", err)
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan error, 1)
	go func() { s.done <- s.exp.Run(ctx) }()
	return nil
}

// Sample implements SampleSink.
func (s *SFlow) Sample(smp l4drop.Sample) {
	s.exp.Sample(sflow.Packet{Frame: smp.Data, Length: smp.Len, Dropped: smp.Action == "drop" || smp.Action == "aborted"})
}

// Reloaded implements Reloader: the new rule set may sample at another rate.
func (s *SFlow) Reloaded(st *l4drop.State) {
	if s.exp != nil && st.Meta.SampleRate > 0 {
		s.exp.SetSamplingRate(st.Meta.SampleRate)
	}
}

// Dropped implements DropCounter.
func (s *SFlow) Dropped() uint64 {
	if s.exp == nil {
		return 0
	}
	return s.exp.Stats().SamplesLost
}

// Stats returns the exporter's counts.
func (s *SFlow) Stats() sflow.Stats { return s.exp.Stats() }

var (
	descSFlowSamples = prometheus.NewDesc("l4drop_sflow_samples_total",
		"Flow samples sent to the sFlow collectors.", []string{"iface"}, nil)
	descSFlowCounterSamples = prometheus.NewDesc("l4drop_sflow_counter_samples_total",
		"Counter samples sent to the sFlow collectors.", []string{"iface"}, nil)
	descSFlowDatagrams = prometheus.NewDesc("l4drop_sflow_datagrams_total",
		"sFlow datagrams sent, counted once per collector.", []string{"iface"}, nil)
	descSFlowDatagramsLost = prometheus.NewDesc("l4drop_sflow_datagrams_lost_total",
		"sFlow datagrams whose send failed (collector unreachable, socket buffer full), once per collector.", []string{"iface"}, nil)
)

// Describe implements prometheus.Collector: the daemon serves the
// exporter's counts beside its own.
func (s *SFlow) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSFlowSamples, descSFlowCounterSamples, descSFlowDatagrams, descSFlowDatagramsLost} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *SFlow) Collect(ch chan<- prometheus.Metric) {
	if s.exp == nil {
		return
	}
	st := s.exp.Stats()
	for _, m := range []struct {
		d *prometheus.Desc
		v uint64
	}{{descSFlowSamples, st.Samples}, {descSFlowCounterSamples, st.CounterSamples},
		{descSFlowDatagrams, st.Datagrams}, {descSFlowDatagramsLost, st.DatagramsLost}} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v), s.iface)
	}
}

// Stop implements Component: the exporter sends what it holds.
func (s *SFlow) Stop() error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	err := <-s.done
	s.link.Close()
	return err
}

// actionNumber is the XDP action l4drop.ActionName names (pass if none).
func actionNumber(name string) uint32 {
	for a := uint32(0); a <= 4; a++ {
		if l4drop.ActionName(a) == name {
			return a
		}
	}
	return 2
}

func (s *SFlow) counters() (sflow.Counters, error) {
	var c sflow.Counters
	ifc, err := s.link.Counters()
	if err != nil {
		return c, err
	}
	c.Interface = &ifc
	err = s.do(func(h *l4drop.Handle) error {
		counts, err := h.ReadCounters()
		if err != nil {
			return err
		}
		rules := h.State.Meta.Rules
		for i, n := range counts {
			if i > len(rules) {
				break // auto slots: not rules of the file
			}
			r := sflow.Rule{Index: sflow.NoRule, Action: actionNumber("pass"), Packets: n.Packets, Bytes: n.Bytes}
			if i < len(rules) {
				r.Index, r.Action, r.Name = uint32(i), actionNumber(rules[i].Action), rules[i].Name
			}
			c.Rules = append(c.Rules, r)
		}
		return nil
	})
	return c, err
}

func (s *SFlow) sampler() (sflow.SamplerStats, error) {
	var st sflow.SamplerStats
	err := s.do(func(h *l4drop.Handle) error {
		counts, err := h.ReadCounters()
		if err != nil {
			return err
		}
		for _, n := range counts {
			st.Pool += n.Packets
		}
		_, st.Lost, err = h.SampleStats()
		return err
	})
	return st, err
}
