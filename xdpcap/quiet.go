package xdpcap

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ErrNoQuiet is returned by SetQuiet for a hook without the quiet twin's
// slots: one of fewer than NumSlots slots.
var ErrNoQuiet = errors.New("the hook has no slots for a quiet twin")

// SetQuiet puts a program's two builds in hook: quiet, the program without
// its tail calls into the hook, in QuietSlot, and loud, the program with
// them, in LoudSlot. A loader that calls it attaches quiet while no capture
// runs on the hook (Capturing) and loud while one does; from then on Start
// and Detach swap one for the other on every XDP link that runs either, so
// that packets pay for the hook only while somebody captures. Either
// program may be nil, which empties its slot (the program has no quiet
// twin). Call it after loading and before attaching, and on every reload.
func SetQuiet(hook *ebpf.Map, quiet, loud *ebpf.Program) error {
	if err := CheckHook(hook); err != nil {
		return err
	}
	if hook.MaxEntries() < NumSlots {
		if quiet == nil && loud == nil {
			return nil
		}
		return fmt.Errorf("%w: it has %d slots, want %d", ErrNoQuiet, hook.MaxEntries(), NumSlots)
	}
	for _, s := range []struct {
		slot uint32
		prog *ebpf.Program
	}{{QuietSlot, quiet}, {LoudSlot, loud}} {
		var err error
		if s.prog != nil {
			err = hook.Update(s.slot, s.prog, ebpf.UpdateAny)
		} else if err = hook.Delete(s.slot); errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("set slot %d of the hook: %w", s.slot, err)
		}
	}
	return nil
}

// Capturing reports whether a capture's filter is in one of hook's
// capture slots (an exit, or the entry): a loader that gives the hook a
// quiet twin (SetQuiet) attaches the loud program then.
func Capturing(hook *ebpf.Map) (bool, error) {
	for slot := range min(hook.MaxEntries(), EntrySlot+1) {
		id, _, err := slotProgram(hook, slot)
		if err != nil {
			return false, err
		}
		if id != 0 {
			return true, nil
		}
	}
	return false, nil
}

// swapLinks makes every XDP link that runs the program in hook[from] run
// the one in hook[to] instead: the quiet twin's swap (SetQuiet). Each swap
// is a compare and exchange (BPF_F_REPLACE), so a link a loader updated in
// the meantime keeps the loader's program. A hook without both programs
// swaps nothing.
func swapLinks(hook *ebpf.Map, from, to uint32) error {
	if hook.MaxEntries() < NumSlots {
		return nil
	}
	fromID, _, err := slotProgram(hook, from)
	if err != nil || fromID == 0 {
		return err
	}
	toID, _, err := slotProgram(hook, to)
	if err != nil || toID == 0 {
		return err
	}
	var old, next *ebpf.Program
	defer func() {
		for _, p := range []*ebpf.Program{old, next} {
			if p != nil {
				p.Close()
			}
		}
	}()
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("link %d: %w", it.ID, err)
		}
		if info.Type != link.XDPType || info.Program != fromID {
			continue
		}
		if old == nil {
			if old, err = ebpf.NewProgramFromID(fromID); err != nil {
				return fmt.Errorf("program %d of the hook: %w", fromID, err)
			}
			if next, err = ebpf.NewProgramFromID(toID); err != nil {
				return fmt.Errorf("program %d of the hook: %w", toID, err)
			}
		}
		raw, ok := it.Link.(interface {
			UpdateArgs(link.RawLinkUpdateOptions) error
		})
		if !ok {
			continue
		}
		err = raw.UpdateArgs(link.RawLinkUpdateOptions{New: next, Old: old, Flags: unix.BPF_F_REPLACE})
		if err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, os.ErrNotExist) {
			// EPERM: the link no longer runs old (a loader swapped it).
			return fmt.Errorf("make XDP link %d run program %d: %w", it.ID, toID, err)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	return nil
}

// quieten puts the quiet twin back on the links running the loud program,
// unless a capture's filter is still in one of hook's slots.
func quieten(hook *ebpf.Map) error {
	busy, err := Capturing(hook)
	if err != nil || busy {
		return err
	}
	return swapLinks(hook, LoudSlot, QuietSlot)
}

// SyncLinks makes every XDP link that runs one of hook's twins (SetQuiet)
// run the one that fits: the loud program while a capture's filter is in
// the hook, the quiet twin otherwise. A loader calls it after attaching,
// for a capture that started or ended while it loaded.
func SyncLinks(hook *ebpf.Map) error {
	busy, err := Capturing(hook)
	if err != nil {
		return err
	}
	if busy {
		return swapLinks(hook, QuietSlot, LoudSlot)
	}
	return swapLinks(hook, LoudSlot, QuietSlot)
}
