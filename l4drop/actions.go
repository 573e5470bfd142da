package l4drop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// MapActions is the per-CPU array of per-action counters of a built rule
// set, pinned as PinActions. Slot i counts ActionCounterNames[i].
const (
	MapActions = "l4drop_actions"
	PinActions = "actions"
)

// Slots of the action counters. The first seven are the outcomes of the
// syncookie action, in the order its C returns them.
const (
	CountSyncookieSent  = iota // SYN answered with a cookie SYN-ACK (XDP_TX)
	CountSyncookieArmed        // SYN handed to the stack to keep its cookie check armed
	CountSyncookieOK           // ACK whose cookie checked: passed
	CountSyncookieKnown        // packet of a connection the kernel knows: passed
	CountSyncookieBad          // ACK with a bad cookie: dropped
	CountSyncookieDrop         // anything else a syncookie rule matched: dropped
	CountSyncookieErr          // SYN that could not be answered: dropped
	CountRatelimited           // packet over a ratelimit rule's limit: dropped
	CountMonitored             // match of a monitor rule (or monitoring auto rule)
	NumActionCounters
)

// ActionCounterSlots is the size of MapActions: room for later counters.
const ActionCounterSlots = 16

// ActionCounterNames name the action counters, as status and the metrics
// show them.
var ActionCounterNames = [NumActionCounters]string{
	"syncookie_sent", "syncookie_armed", "syncookie_ok", "syncookie_known",
	"syncookie_bad", "syncookie_drop", "syncookie_err", "ratelimited", "monitored",
}

// ActionCounters are the action counters of a rule set, summed over CPUs,
// in ActionCounterNames order.
type ActionCounters [NumActionCounters]uint64

// Map returns the counters by name.
func (c ActionCounters) Map() map[string]uint64 {
	m := make(map[string]uint64, len(c))
	for i, v := range c {
		m[ActionCounterNames[i]] = v
	}
	return m
}

// readActions sums the action counters in m over CPUs.
func readActions(m *ebpf.Map) (ActionCounters, error) {
	var out ActionCounters
	var per []uint64
	for i := range out {
		if err := m.Lookup(uint32(i), &per); err != nil {
			return out, fmt.Errorf("read action counters: %w", err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// openActions opens the pinned action counters in dir; nil, nil for rule
// sets built before them.
func openActions(dir string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinActions), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", PinActions, err)
	}
	return m, nil
}
