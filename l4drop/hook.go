package l4drop

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/xdpcap"
)

// reuseHook opens the xdpcap hook pinned at path for a reload, so that a
// capture running on it goes on seeing packets. It returns nil (a new hook
// is made and pinned in its place) when nothing usable is pinned there, or
// when the pinned hook has another number of slots than spec, the ELF's:
// an older l4drop pinned a hook of xdpcap.NumActions slots, which has no
// room for capture at entry, and the kernel would refuse it in the ELF's
// place anyway. A capture running on such a hook would silently stop
// seeing packets once it is replaced: then the load is refused, with an
// error wrapping xdpcap.ErrHookBusy.
func reuseHook(path string, spec *ebpf.MapSpec) (*ebpf.Map, error) {
	hook, err := xdpcap.OpenHook(path)
	if err != nil {
		return nil, nil
	}
	if hook.MaxEntries() == spec.MaxEntries {
		return hook, nil
	}
	defer hook.Close()
	for slot := range min(hook.MaxEntries(), xdpcap.EntrySlot+1) {
		var id uint32
		if err := hook.Lookup(slot, &id); err == nil && id != 0 {
			return nil, fmt.Errorf("%w: the xdpcap hook %s has %d slots where this rule set's has %d, so it must be replaced, "+
				"but its slot %d holds program %d, a capture's filter: stop the capture (or run xdpcap -clear %s if it was killed) and load again",
				xdpcap.ErrHookBusy, path, hook.MaxEntries(), spec.MaxEntries, slot, id, path)
		}
	}
	return nil, nil
}

// bodySwap is the program the hook's body slot held before a load put the
// new rule set's body there, to put it back should the load fail.
type bodySwap struct {
	hook *ebpf.Map
	old  *ebpf.Program // nil: the slot was empty
}

// setBody puts body, the rule set's ProgBody, in hook's body slot, so
// that `xdpcap -entry` can capture at the entry of the program that calls
// xdpcap_entry. A rule set without a body (built before capture at entry)
// empties the slot instead: a body left there from a newer rule set would
// make xdpcap believe this one supports it.
func setBody(hook *ebpf.Map, body *ebpf.Program) (*bodySwap, error) {
	s := &bodySwap{hook: hook}
	if hook.MaxEntries() < xdpcap.NumSlots {
		if body != nil {
			return nil, fmt.Errorf("%w: program %s, but map %s has %d slots, not %d", ErrIncompatible, ProgBody, MapHook, hook.MaxEntries(), xdpcap.NumSlots)
		}
		return s, nil
	}
	var id uint32
	if err := hook.Lookup(uint32(xdpcap.BodySlot), &id); err == nil && id != 0 {
		old, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if err != nil {
			return nil, fmt.Errorf("open the body program in the xdpcap hook: %w", err)
		}
		s.old = old
	}
	var err error
	if body != nil {
		err = xdpcap.SetBody(hook, body)
	} else if err = hook.Delete(uint32(xdpcap.BodySlot)); errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("xdpcap hook: %w", err)
	}
	return s, nil
}

// restore puts back what the body slot held before setBody.
func (s *bodySwap) restore() {
	if s.hook.MaxEntries() < xdpcap.NumSlots {
		return
	}
	if s.old != nil {
		_ = s.hook.Update(uint32(xdpcap.BodySlot), s.old, ebpf.UpdateAny)
		return
	}
	_ = s.hook.Delete(uint32(xdpcap.BodySlot))
}

func (s *bodySwap) close() {
	if s.old != nil {
		s.old.Close()
		s.old = nil
	}
}
