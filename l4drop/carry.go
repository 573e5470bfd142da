package l4drop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrBusy is returned by Load while another load on the interface runs.
var ErrBusy = errors.New("busy")

// lockDir serializes loads on one interface: an advisory lock on a file
// named after the pin directory, in /run/l4drop (a lock on bpffs itself
// would be lost with a mount).
func lockDir(dir, iface string) (func(), error) {
	const lockRoot = "/run/l4drop"
	if err := os.MkdirAll(lockRoot, 0o700); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	name := filepath.Join(lockRoot, strings.ReplaceAll(strings.Trim(dir, "/"), "/", "_")+".lock")
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: another l4drop is loading on %s (lock %s)", ErrBusy, iface, name)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}

func normMode(m string) string {
	switch m {
	case "driver":
		return "native"
	case "skb":
		return "generic"
	}
	return m
}

// previous is the rule set loaded before a Load: its state and counters.
type previous struct {
	state    *State
	counters *ebpf.Map
}

func openPrevious(dir string) *previous {
	p := &previous{}
	sm, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinState), nil)
	if err != nil {
		return p
	}
	defer sm.Close()
	if p.state, err = readStateMap(sm); err != nil {
		p.state = nil
		return p
	}
	if p.counters, err = ebpf.LoadPinnedMap(filepath.Join(dir, PinCounters), nil); err != nil {
		p.counters = nil
	}
	return p
}

func (p *previous) close() {
	if p.counters != nil {
		p.counters.Close()
	}
}

// carried are counters copied from the previous rule set: new index, old
// index, and the per-CPU values copied.
type carried struct {
	old, to *counterTable
	pairs   [][2]int
	at      [][]Counter
}

// carry copies the counters of the rules the new set keeps (same name,
// same matchers), the no-rule counter and the auto rules' into the new
// counters map, so that counters only ever grow across reloads. Counters
// it cannot read or write start from zero.
func (p *previous) carry(meta *Meta, to *ebpf.Map) *carried {
	c := &carried{}
	if p.state == nil || p.counters == nil || to == nil {
		return c
	}
	ot, err := newCounterTable(p.counters)
	if err != nil {
		return c
	}
	nt, err := newCounterTable(to)
	if err != nil {
		return c
	}
	old, err := ot.all()
	if err != nil {
		return c
	}
	om := &p.state.Meta
	var pairs [][2]int
	for i, r := range meta.Rules {
		j := slices.IndexFunc(om.Rules, func(o MetaRule) bool { return sameRule(&o, &r) })
		if j >= 0 {
			pairs = append(pairs, [2]int{i, j})
		}
	}
	for k := 0; k <= AutoSlots; k++ { // no-rule, then the auto rules
		pairs = append(pairs, [2]int{len(meta.Rules) + k, len(om.Rules) + k})
	}
	vals := map[int][]Counter{}
	for _, pr := range pairs {
		if pr[0] >= nt.len() || pr[1] >= len(old) {
			continue
		}
		vals[pr[0]] = old[pr[1]]
		c.pairs = append(c.pairs, pr)
		c.at = append(c.at, old[pr[1]])
	}
	if nt.set(vals) != nil {
		return &carried{}
	}
	c.old, c.to = ot, nt
	return c
}

// delta adds what the old program counted since carry, once it is
// replaced.
func (c *carried) delta() {
	if len(c.pairs) == 0 {
		return
	}
	now, err := c.old.all()
	if err != nil {
		return
	}
	cur, err := c.to.all()
	if err != nil {
		return
	}
	vals := map[int][]Counter{}
	for n, pr := range c.pairs {
		nw, cu := now[pr[1]], cur[pr[0]]
		changed := false
		for cpu := range cu {
			if cpu < len(nw) && cpu < len(c.at[n]) && nw[cpu] != c.at[n][cpu] {
				cu[cpu].Packets += nw[cpu].Packets - c.at[n][cpu].Packets
				cu[cpu].Bytes += nw[cpu].Bytes - c.at[n][cpu].Bytes
				changed = true
			}
		}
		if changed {
			vals[pr[0]] = cu
		}
	}
	_ = c.to.set(vals)
}

// sameRule reports whether a rule of a new set is the one of the loaded
// set, so its counters go on. Meta names the kinds of a rule's matchers,
// not their constants: a rule whose expression changed but kept its name,
// action and kinds of matchers keeps its counts.
func sameRule(a, b *MetaRule) bool {
	return a.Name == b.Name && a.Action == b.Action && a.Family == b.Family && slices.Equal(a.Matchers, b.Matchers)
}
