package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/l4drop/l4drop/l4drop"
)

// Expiry is the component that switches rules off when their time is up:
// `until: RFC 3339` at that time, `expires: DURATION` that long after the
// daemon first loaded the rule. Switching off is a reload of the same ELF
// with the rule disabled: an atomic link update, no clang.
type Expiry struct {
	d     *Daemon
	mu    sync.Mutex
	first map[string]time.Time // when each rule was first seen loaded
	done  map[string]bool
	due   []due
}

type due struct {
	name string
	at   time.Time
}

// NewExpiry returns the expiry component.
func NewExpiry() *Expiry {
	return &Expiry{first: map[string]time.Time{}, done: map[string]bool{}}
}

// Name implements Component.
func (e *Expiry) Name() string { return "expiry" }

// Start implements Component.
func (e *Expiry) Start(_ context.Context, d *Daemon) error {
	e.d = d
	return d.Do(func(h *l4drop.Handle) error {
		e.Reloaded(h.State)
		return nil
	})
}

// Reloaded implements Reloader: the due times of the new rule set.
func (e *Expiry) Reloaded(st *l4drop.State) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	e.due = e.due[:0]
	for _, r := range st.Meta.Rules {
		var at time.Time
		switch {
		case r.Until != nil:
			at = *r.Until
		case r.Expires > 0:
			if _, ok := e.first[r.Name]; !ok {
				e.first[r.Name] = now
			}
			at = e.first[r.Name].Add(r.Expires)
		default:
			continue
		}
		if !e.done[r.Name] {
			e.due = append(e.due, due{r.Name, at})
		}
	}
}

// Tick implements Ticker.
func (e *Expiry) Tick(now time.Time) {
	e.mu.Lock()
	var names []string
	var keep []due
	for _, x := range e.due {
		if now.Before(x.at) {
			keep = append(keep, x)
			continue
		}
		names = append(names, x.name)
		e.done[x.name] = true
	}
	e.due = keep
	e.mu.Unlock()
	if len(names) == 0 {
		return
	}
	// SwitchOff reloads, which calls Reloaded: not under e.mu.
	if err := e.d.SwitchOff(names...); err != nil {
		e.d.Logger().Error("expiry: switching rules off failed", "rules", names, "err", err)
		return
	}
	e.d.Logger().Info("expiry: rules switched off, their time is up", "rules", names)
}

// Stop implements Component.
func (e *Expiry) Stop() error { return nil }
