package l4drop

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// Pin names of the auto rule table, its length and when each slot was set.
const (
	PinAuto      = "auto"
	PinAutoCount = "auto_count"
	PinAutoSince = "auto_since"
)

// ErrNoAuto is returned for a rule set built without auto rules (by an
// older l4drop).
var ErrNoAuto = errors.New("the rule set has no auto rules (built by an older l4drop)")

// ErrAutoFull is returned by AddAutoRule when every slot is taken.
var ErrAutoFull = errors.New("every auto rule slot is taken")

// AutoEntry is an auto rule deployed in a slot.
type AutoEntry struct {
	Slot  int
	Rule  AutoRule
	Since time.Time
}

func autoStateName(s AutoState) string {
	switch s {
	case AutoOff:
		return "off"
	case AutoDrop:
		return "drop"
	case AutoMonitor:
		return "monitor"
	}
	return fmt.Sprintf("state%d", s)
}

func (h *Handle) autoCount() (int, error) {
	if h.Auto == nil || h.AutoCount == nil {
		return 0, ErrNoAuto
	}
	var n uint32
	if err := h.AutoCount.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read auto rule count: %w", err)
	}
	return int(min(n, AutoSlots)), nil
}

func (h *Handle) setAutoCount(n int) error { return writeAutoCount(h.AutoCount, n) }

// writeAutoCount sets the count of auto rule slots in use (MapAutoCount).
func writeAutoCount(m *ebpf.Map, n int) error {
	if err := m.Put(uint32(0), uint32(n)); err != nil {
		return fmt.Errorf("set auto rule count: %w", err)
	}
	return nil
}

// writeAutoRule puts r in slot of the auto rule table (MapAuto).
func writeAutoRule(m *ebpf.Map, slot int, r AutoRule) error {
	b, err := r.MarshalBinary()
	if err != nil {
		return err
	}
	if err := m.Put(uint32(slot), b); err != nil {
		return fmt.Errorf("auto rule slot %d: %w", slot, err)
	}
	return nil
}

func (h *Handle) putAuto(slot int, r AutoRule, since time.Time) error {
	if err := writeAutoRule(h.Auto, slot, r); err != nil {
		return err
	}
	if h.AutoSince != nil {
		if err := h.AutoSince.Put(uint32(slot), uint64(since.UnixNano())); err != nil {
			return fmt.Errorf("auto rule slot %d: %w", slot, err)
		}
	}
	return nil
}

// AutoRules returns the deployed auto rules in slot order, the order the
// program tries them in.
func (h *Handle) AutoRules() ([]AutoEntry, error) {
	n, err := h.autoCount()
	if err != nil {
		return nil, err
	}
	out := make([]AutoEntry, 0, n)
	for k := 0; k < n; k++ {
		var b []byte
		if err := h.Auto.Lookup(uint32(k), &b); err != nil {
			return nil, fmt.Errorf("read auto rule slot %d: %w", k, err)
		}
		e := AutoEntry{Slot: k}
		if err := e.Rule.UnmarshalBinary(b); err != nil {
			return nil, fmt.Errorf("auto rule slot %d: %w", k, err)
		}
		if h.AutoSince != nil {
			var ns uint64
			if err := h.AutoSince.Lookup(uint32(k), &ns); err == nil && ns != 0 {
				e.Since = time.Unix(0, int64(ns)).UTC()
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// AddAutoRule deploys r in the first free slot and returns the slot. The
// slot is written before the count is raised, so the program never tries a
// half-written rule.
func (h *Handle) AddAutoRule(r AutoRule) (int, error) {
	if err := r.Validate(); err != nil {
		return 0, err
	}
	n, err := h.autoCount()
	if err != nil {
		return 0, err
	}
	if n >= AutoSlots {
		return 0, fmt.Errorf("%w (%d)", ErrAutoFull, AutoSlots)
	}
	if err := h.putAuto(n, r, time.Now()); err != nil {
		return 0, err
	}
	// The slot's counter starts from zero for its new rule.
	if err := h.resetCounter(len(h.State.Meta.Rules) + 1 + n); err != nil {
		return 0, err
	}
	return n, h.setAutoCount(n + 1)
}

// RemoveAutoRule removes the rule in slot and moves the later ones down a
// slot, each with its counter, before the count is lowered: during the
// move a packet may meet a rule twice, never miss one.
func (h *Handle) RemoveAutoRule(slot int) error {
	all, err := h.AutoRules()
	if err != nil {
		return err
	}
	if slot < 0 || slot >= len(all) {
		return fmt.Errorf("auto rule slot %d: %d deployed", slot, len(all))
	}
	base := len(h.State.Meta.Rules) + 1
	for k := slot; k+1 < len(all); k++ {
		if err := h.putAuto(k, all[k+1].Rule, all[k+1].Since); err != nil {
			return err
		}
		if err := h.copyCounter(base+k+1, base+k); err != nil {
			return err
		}
	}
	return h.setAutoCount(len(all) - 1)
}

// ClearAutoRules removes every auto rule.
func (h *Handle) ClearAutoRules() error {
	if _, err := h.autoCount(); err != nil {
		return err
	}
	return h.setAutoCount(0)
}

func (h *Handle) resetCounter(i int) error {
	t, err := newCounterTable(h.Counters)
	if err != nil {
		return err
	}
	return t.set(map[int][]Counter{i: nil})
}

func (h *Handle) copyCounter(from, to int) error {
	t, err := newCounterTable(h.Counters)
	if err != nil {
		return err
	}
	if from >= t.len() {
		return nil
	}
	per, err := t.get(from)
	if err != nil {
		return err
	}
	return t.set(map[int][]Counter{to: per})
}
