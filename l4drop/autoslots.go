package l4drop

import (
	"fmt"
	"time"
)

// offRule fills slots that hold no rule.
var offRule = AutoRule{State: AutoOff, Family: 4}

// SetAutoRule deploys r in slot, leaving the other slots where they are
// (l4drop run --auto names its rules by slot). The slot and its zeroed
// counter are written before the count covers the slot, so the program
// never tries a half-written rule.
func (h *Handle) SetAutoRule(slot int, r AutoRule) error {
	if slot < 0 || slot >= AutoSlots {
		return fmt.Errorf("%w: slot %d of %d", ErrAutoRule, slot, AutoSlots)
	}
	if err := r.Validate(); err != nil {
		return err
	}
	n, err := h.autoCount()
	if err != nil {
		return err
	}
	for k := n; k < slot; k++ {
		if err := h.putAuto(k, offRule, time.Unix(0, 0)); err != nil {
			return err
		}
	}
	if err := h.putAuto(slot, r, time.Now()); err != nil {
		return err
	}
	if err := h.resetCounter(len(h.State.Meta.Rules) + 1 + slot); err != nil {
		return err
	}
	if slot >= n {
		return h.setAutoCount(slot + 1)
	}
	return nil
}

// ClearAutoRule switches slot off, leaving the others where they are; the
// count shrinks past the slots that hold no rule at its end.
func (h *Handle) ClearAutoRule(slot int) error {
	all, err := h.AutoRules()
	if err != nil {
		return err
	}
	if slot < 0 || slot >= len(all) {
		return nil
	}
	if err := h.putAuto(slot, offRule, time.Unix(0, 0)); err != nil {
		return err
	}
	all[slot].Rule = offRule
	m := len(all)
	for m > 0 && all[m-1].Rule.State == AutoOff {
		m--
	}
	return h.setAutoCount(m)
}
