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

// slotSwap is what the hook's program slots (body, quiet twin, loud
// program) held before a load put the new rule set's there, to put it
// back should the load fail.
type slotSwap struct {
	hook  *ebpf.Map
	slots []uint32
	old   []*ebpf.Program // nil: the slot was empty
}

// setSlots puts the rule set's programs in hook's program slots: body, the
// rule set's ProgBody, in the body slot, so that `xdpcap -entry` can
// capture at the entry of the program that calls xdpcap_entry; quiet, its
// ProgQuiet, and loud, the program that calls the hook, in the quiet
// twin's slots, so that xdpcap can swap one for the other. A nil program
// (a rule set built before either) empties its slot: a program left there
// from a newer rule set would make xdpcap believe this one supports it.
func setSlots(hook *ebpf.Map, body, quiet, loud *ebpf.Program) (*slotSwap, error) {
	s := &slotSwap{hook: hook}
	want := []struct {
		slot uint32
		prog *ebpf.Program
		name string
	}{{xdpcap.BodySlot, body, ProgBody}, {xdpcap.QuietSlot, quiet, ProgQuiet}, {xdpcap.LoudSlot, loud, "the first program"}}
	if quiet == nil {
		want[2].prog = nil
	}
	for _, w := range want {
		if w.slot >= hook.MaxEntries() {
			if w.prog != nil {
				return nil, fmt.Errorf("%w: program %s, but map %s has %d slots, not %d", ErrIncompatible, w.name, MapHook, hook.MaxEntries(), xdpcap.NumSlots)
			}
			continue
		}
		var id uint32
		var old *ebpf.Program
		if err := hook.Lookup(w.slot, &id); err == nil && id != 0 {
			var err error
			if old, err = ebpf.NewProgramFromID(ebpf.ProgramID(id)); err != nil {
				s.close()
				return nil, fmt.Errorf("open the program in slot %d of the xdpcap hook: %w", w.slot, err)
			}
		}
		s.slots, s.old = append(s.slots, w.slot), append(s.old, old)
	}
	var err error
	if body != nil {
		err = xdpcap.SetBody(hook, body)
	} else if hook.MaxEntries() > xdpcap.BodySlot {
		if err = hook.Delete(uint32(xdpcap.BodySlot)); errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
	}
	if err == nil {
		err = xdpcap.SetQuiet(hook, want[1].prog, want[2].prog)
	}
	if err != nil {
		s.restore()
		s.close()
		return nil, fmt.Errorf("xdpcap hook: %w", err)
	}
	return s, nil
}

// restore puts back what the slots held before setSlots.
func (s *slotSwap) restore() {
	for i, slot := range s.slots {
		if s.old[i] != nil {
			_ = s.hook.Update(slot, s.old[i], ebpf.UpdateAny)
			continue
		}
		_ = s.hook.Delete(slot)
	}
}

func (s *slotSwap) close() {
	for i, p := range s.old {
		if p != nil {
			p.Close()
			s.old[i] = nil
		}
	}
}
