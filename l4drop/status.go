package l4drop

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/l4pins"
)

// RuleStatus is one rule's line in Status.
type RuleStatus struct {
	Name    string  `json:"name"`
	Action  string  `json:"action"`
	Enabled bool    `json:"enabled"`
	Packets uint64  `json:"packets"`
	Bytes   uint64  `json:"bytes"`
	PPS     float64 `json:"pps"`
	BPS     float64 `json:"bps"`
}

// Status is the state of a loaded rule set: per-rule counters (summed over
// CPUs), samples written and lost.
type Status struct {
	Iface      string       `json:"iface"`
	Location   string       `json:"location,omitempty"`
	LoadedAt   time.Time    `json:"loaded_at"`
	Programs   int          `json:"programs"`
	SampleRate uint32       `json:"sample_rate"` // one packet in SampleRate; 0: off
	Rules      []RuleStatus `json:"rules"`
	// Unmatched counts packets no enabled rule matched (passed).
	Unmatched RuleStatus `json:"unmatched"`
	Samples   uint64     `json:"samples"`
	Lost      uint64     `json:"lost"`
	// Auto are the auto rules the daemon deployed, in slot order.
	Auto []AutoStatus `json:"auto_rules,omitempty"`
	// Actions are the per-action counters (ActionCounterNames), summed
	// over CPUs; nil for rule sets built before them.
	Actions map[string]uint64 `json:"actions,omitempty"`
}

// AutoStatus is one auto rule's line in Status.
type AutoStatus struct {
	// Name is auto-SLOT, as the daemon's log names the rule.
	Name    string    `json:"name"`
	Slot    int       `json:"slot"`
	Auto    bool      `json:"auto"` // always true: tells auto rules from the file's
	State   string    `json:"state"`
	Since   time.Time `json:"since"`
	Expr    string    `json:"expr"`
	Packets uint64    `json:"packets"`
	Bytes   uint64    `json:"bytes"`
	PPS     float64   `json:"pps"`
	BPS     float64   `json:"bps"`
}

// Handle is an open loaded rule set: its pinned maps and state.
type Handle struct {
	Dir      string
	State    *State
	Counters *ebpf.Map
	Stats    *ebpf.Map
	Config   *ebpf.Map
	Samples  *ebpf.Map
	// Auto, AutoCount and AutoSince hold the auto rules; nil for rule sets
	// built without them.
	Auto, AutoCount, AutoSince *ebpf.Map
	// Actions holds the per-action counters (MapActions); nil for rule
	// sets built before them.
	Actions *ebpf.Map
}

// Open opens the rule set pinned in dir (see Dir).
func Open(dir string) (*Handle, error) {
	if _, err := os.Stat(filepath.Join(dir, PinState)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w (nothing at %s)", ErrNotLoaded, dir)
		}
		return nil, err
	}
	h := &Handle{Dir: dir}
	for _, m := range []struct {
		pin string
		dst **ebpf.Map
	}{{PinCounters, &h.Counters}, {PinStats, &h.Stats}, {PinConfig, &h.Config}, {PinSamples, &h.Samples}} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, m.pin), nil)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("open %s: %w", m.pin, err)
		}
		*m.dst = mp
	}
	for _, m := range []struct {
		pin string
		dst **ebpf.Map
	}{{PinAuto, &h.Auto}, {PinAutoCount, &h.AutoCount}, {PinAutoSince, &h.AutoSince}} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, m.pin), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue // built without auto rules
		}
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("open %s: %w", m.pin, err)
		}
		*m.dst = mp
	}
	var err error
	if h.Actions, err = openActions(dir); err != nil {
		h.Close()
		return nil, err
	}
	sm, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinState), nil)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open state: %w", err)
	}
	defer sm.Close()
	if h.State, err = readStateMap(sm); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// Close closes the maps.
func (h *Handle) Close() error {
	for _, m := range []*ebpf.Map{h.Counters, h.Stats, h.Config, h.Samples, h.Auto, h.AutoCount, h.AutoSince, h.Actions} {
		if m != nil {
			m.Close()
		}
	}
	return nil
}

// ReadCounters returns packets and bytes per rule, summed over CPUs, then
// those of packets no rule matched, then the auto rules'.
func (h *Handle) ReadCounters() ([]Counter, error) {
	cs, err := ReadCounterMap(h.Counters)
	if err != nil {
		return nil, err
	}
	// The last element's counters past the auto rules' are none.
	if n := len(h.State.Meta.Rules) + 1 + h.State.Meta.AutoSlots; n < len(cs) {
		cs = cs[:n]
	}
	return cs, nil
}

// SampleStats returns samples written and lost, summed over CPUs.
func (h *Handle) SampleStats() (samples, lost uint64, err error) {
	var per []struct{ Samples, Lost uint64 }
	if err := h.Stats.Lookup(uint32(0), &per); err != nil {
		return 0, 0, fmt.Errorf("read sample stats: %w", err)
	}
	for _, s := range per {
		samples += s.Samples
		lost += s.Lost
	}
	return samples, lost, nil
}

// SetSampleRate changes the sample rate (one in rate; 0 off) at once,
// without reloading.
func (h *Handle) SetSampleRate(rate uint32) error {
	cfg, err := readConfig(h.Config)
	if err != nil {
		return fmt.Errorf("read sample config: %w", err)
	}
	cfg.Threshold = SampleThreshold(rate)
	if err := writeConfig(h.Config, cfg); err != nil {
		return fmt.Errorf("set sample rate: %w", err)
	}
	return nil
}

// Status reads the counters; with interval > 0 it reads them twice,
// interval apart, for rates.
func (h *Handle) Status(interval time.Duration) (*Status, error) {
	c1, err := h.ReadCounters()
	if err != nil {
		return nil, err
	}
	c2 := c1
	if interval > 0 {
		time.Sleep(interval)
		if c2, err = h.ReadCounters(); err != nil {
			return nil, err
		}
	}
	samples, lost, err := h.SampleStats()
	if err != nil {
		return nil, err
	}
	cfg, err := readConfig(h.Config)
	if err != nil {
		return nil, fmt.Errorf("read sample config: %w", err)
	}
	st := &Status{
		Iface: h.State.Iface, Location: h.State.Location, LoadedAt: h.State.LoadedAt,
		Programs: len(h.State.Meta.Programs), Samples: samples, Lost: lost,
	}
	if cfg.Threshold > 0 {
		// The threshold was rounded down from 2^32/rate.
		st.SampleRate = uint32(min(math.Round(float64(uint64(1)<<32)/float64(cfg.Threshold)), math.MaxUint32))
	}
	rs := func(i int) RuleStatus {
		r := RuleStatus{Packets: c2[i].Packets, Bytes: c2[i].Bytes}
		if interval > 0 {
			r.PPS = float64(c2[i].Packets-c1[i].Packets) / interval.Seconds()
			r.BPS = float64(c2[i].Bytes-c1[i].Bytes) / interval.Seconds()
		}
		return r
	}
	for i, mr := range h.State.Meta.Rules {
		r := rs(i)
		r.Name, r.Action, r.Enabled = mr.Name, mr.Action, h.State.Enabled[i]
		st.Rules = append(st.Rules, r)
	}
	st.Unmatched = rs(len(h.State.Meta.Rules))
	st.Unmatched.Name, st.Unmatched.Action, st.Unmatched.Enabled = "(no rule)", "pass", true
	if h.Actions != nil {
		ac, err := readActions(h.Actions)
		if err != nil {
			return nil, err
		}
		st.Actions = ac.Map()
	}
	autos, err := h.AutoRules()
	if err != nil && !errors.Is(err, ErrNoAuto) {
		return nil, err
	}
	for _, a := range autos {
		if a.Rule.State == AutoOff {
			// An empty slot between rules: no rule.
			continue
		}
		as := AutoStatus{Name: fmt.Sprintf("auto-%d", a.Slot), Slot: a.Slot, Auto: true, State: autoStateName(a.Rule.State), Since: a.Since, Expr: a.Rule.Expr()}
		if i := len(h.State.Meta.Rules) + 1 + a.Slot; i < len(c2) {
			r := rs(i)
			as.Packets, as.Bytes, as.PPS, as.BPS = r.Packets, r.Bytes, r.PPS, r.BPS
		}
		st.Auto = append(st.Auto, as)
	}
	return st, nil
}

// Unload detaches the rule set pinned in dir and removes its pins. The
// xdpcap hook goes too: a capture running on it keeps its own reference.
func Unload(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, PinLink)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w (nothing at %s)", ErrNotLoaded, dir)
		}
		return err
	}
	// The sysctls a syncookie rule changed go back once it is detached.
	var saved map[string]string
	var netns string
	if sm, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinState), nil); err == nil {
		if st, err := readStateMap(sm); err == nil {
			saved, netns = st.Sysctls, st.Netns
		}
		sm.Close()
	}
	if err := l4pins.Detach(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove pins: %w", err)
	}
	if err := restoreSysctls(netns, saved); err != nil {
		return fmt.Errorf("unloaded, but restoring the sysctls the syncookie action changed: %w", err)
	}
	return nil
}
