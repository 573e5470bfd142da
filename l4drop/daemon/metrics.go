package daemon

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/l4drop/l4drop/l4drop"
)

// The metrics, described in docs/metrics.md. Rule counters carry the rule's
// name and action only: a label that changes (enabled, say) would start a
// new series and break rate().
var (
	descRulePackets = prometheus.NewDesc("l4drop_rule_packets_total",
		"Packets matched per rule; rule=\"(no rule)\" counts packets no enabled rule matched.", []string{"iface", "rule", "action"}, nil)
	descRuleBytes = prometheus.NewDesc("l4drop_rule_bytes_total",
		"Bytes matched per rule, from the Ethernet header on.", []string{"iface", "rule", "action"}, nil)
	descRuleEnabled = prometheus.NewDesc("l4drop_rule_enabled",
		"1 if the rule is switched on, 0 if off.", []string{"iface", "rule"}, nil)
	descAutoPackets = prometheus.NewDesc("l4drop_auto_rule_packets_total",
		"Packets matched per auto rule slot.", []string{"iface", "slot", "expr"}, nil)
	descAutoBytes = prometheus.NewDesc("l4drop_auto_rule_bytes_total",
		"Bytes matched per auto rule slot.", []string{"iface", "slot", "expr"}, nil)
	descSamples = prometheus.NewDesc("l4drop_samples_total",
		"Samples the program wrote for user space.", []string{"iface"}, nil)
	descLost = prometheus.NewDesc("l4drop_samples_lost_total",
		"Samples the program could not write because the reader was slow.", []string{"iface"}, nil)
	descSampleRate = prometheus.NewDesc("l4drop_sample_rate",
		"One packet in this many is sampled; 0: sampling off.", []string{"iface"}, nil)
	descLoaded = prometheus.NewDesc("l4drop_loaded_timestamp_seconds",
		"When the rule set was loaded, in seconds since the epoch.", []string{"iface"}, nil)
	descReloads = prometheus.NewDesc("l4drop_reloads_total",
		"Rule sets this daemon loaded over an earlier one.", []string{"iface"}, nil)
	descFails = prometheus.NewDesc("l4drop_reload_failures_total",
		"Reloads that failed; the rule set loaded before stayed.", []string{"iface"}, nil)
	descActionPackets = prometheus.NewDesc("l4drop_action_packets_total",
		"Packets per action outcome: syncookie_sent, syncookie_ok, syncookie_bad (and the other syncookie_ outcomes), ratelimited, monitored.",
		[]string{"iface", "counter"}, nil)
	descSinkDropped = prometheus.NewDesc("l4drop_sink_dropped_total",
		"Samples a component dropped because it could not keep up.", []string{"iface", "component"}, nil)
)

// collector reads the rule set's counters at each scrape.
type collector struct{ d *Daemon }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRulePackets, descRuleBytes, descRuleEnabled, descAutoPackets, descAutoBytes,
		descSamples, descLost, descSampleRate, descLoaded, descReloads, descFails, descSinkDropped, descActionPackets} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	iface := c.d.cfg.Load.Iface
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	err := c.d.Do(func(h *l4drop.Handle) error {
		st, err := h.Status(0)
		if err != nil {
			return err
		}
		for _, r := range append(st.Rules, st.Unmatched) {
			counter(descRulePackets, r.Packets, iface, r.Name, r.Action)
			counter(descRuleBytes, r.Bytes, iface, r.Name, r.Action)
			if r.Name != st.Unmatched.Name {
				en := 0.0
				if r.Enabled {
					en = 1
				}
				gauge(descRuleEnabled, en, iface, r.Name)
			}
		}
		for _, a := range st.Auto {
			slot := strconv.Itoa(a.Slot)
			counter(descAutoPackets, a.Packets, iface, slot, a.Expr)
			counter(descAutoBytes, a.Bytes, iface, slot, a.Expr)
		}
		for _, name := range l4drop.ActionCounterNames {
			if v, ok := st.Actions[name]; ok {
				counter(descActionPackets, v, iface, name)
			}
		}
		counter(descSamples, st.Samples, iface)
		counter(descLost, st.Lost, iface)
		gauge(descSampleRate, float64(st.SampleRate), iface)
		gauge(descLoaded, float64(st.LoadedAt.UnixNano())/1e9, iface)
		return nil
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descRulePackets, err)
	}
	counter(descReloads, c.d.reloads.Load(), iface)
	counter(descFails, c.d.fails.Load(), iface)
	for _, comp := range c.d.cfg.Components {
		if dc, ok := comp.(DropCounter); ok {
			counter(descSinkDropped, dc.Dropped(), iface, comp.Name())
		}
	}
}

// metricsHandler serves /metrics from a registry of the daemon's own:
// its rule set, and the Go runtime and process collectors.
func (d *Daemon) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Components with counts of their own (sFlow's datagrams) serve them.
	for _, c := range d.cfg.Components {
		if pc, ok := c.(prometheus.Collector); ok {
			reg.MustRegister(pc)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{d}}))
	return mux
}

type slogPrinter struct{ d *Daemon }

func (p slogPrinter) Println(v ...any) { p.d.log.Error("metrics", "err", v) }
