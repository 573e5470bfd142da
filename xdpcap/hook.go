package xdpcap

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// Action is an XDP action, the value an XDP program returns. It is also the
// index of the hook slot that sees packets ending with that action.
type Action uint32

// The XDP actions, as in linux/bpf.h.
const (
	Aborted  Action = 0
	Drop     Action = 1
	Pass     Action = 2
	TX       Action = 3
	Redirect Action = 4
)

// NumActions is the number of XDP actions, and so of exit slots.
const NumActions = 5

// Actions lists every XDP action in slot order.
var Actions = []Action{Aborted, Drop, Pass, TX, Redirect}

// Entry is not an XDP action: it marks packets captured as they enter the
// XDP program, before it acts on them or rewrites them (the hook's
// EntrySlot). Packets and counters of an entry capture carry it as their
// action.
const Entry Action = EntrySlot

// The slots of a hook beyond the exits (one per action, 0 to 4).
const (
	// EntrySlot holds the entry filter while a capture at the program's
	// entry runs; the program tail calls it first thing (xdpcap_entry,
	// Enter) and falls through while it is empty.
	EntrySlot = 5
	// BodySlot holds the program's body: the program without its
	// xdpcap_entry call, which the entry filter tail calls once it has
	// captured the packet. The program's loader puts it there (SetBody);
	// xdpcap never changes it.
	BodySlot = 6
	// QuietSlot holds the program's quiet twin: the same program without
	// the tail calls into the hook, which the program's loader attaches
	// while nobody captures (SetQuiet). Empty tail calls are cheap, not
	// free: a program that makes none spends about 0.7 ns less a packet.
	QuietSlot = 7
	// LoudSlot holds the program with its tail calls into the hook: while
	// a capture runs, xdpcap attaches it in the quiet twin's place, and
	// puts the twin back when the capture ends.
	LoudSlot = 8
	// NumSlots is the number of slots of a hook with every feature: exits,
	// capture at entry (hooks of BodySlot+1 slots have that much) and the
	// quiet twin. Hooks with NumActions slots support exit capture only.
	NumSlots = 9
)

// numPoints is the number of capture points of a hook: its exits and its
// entry, the stride of the capture's counters.
const numPoints = NumActions + 1

// actionNames is the one table of the actions' names, by capture point:
// the name xdpcap prints, the name linux/bpf.h gives, and the lower-case
// name rules, -actions and filter program names use.
var actionNames = [numPoints]struct{ print, kernel, short string }{
	{"XDPAborted", "XDP_ABORTED", "aborted"},
	{"XDPDrop", "XDP_DROP", "drop"},
	{"XDPPass", "XDP_PASS", "pass"},
	{"XDPTx", "XDP_TX", "tx"},
	{"XDPRedirect", "XDP_REDIRECT", "redirect"},
	{"Entry", "entry", "entry"},
}

// String returns the name xdpcap prints for the action, such as "XDPPass",
// or "Entry".
func (a Action) String() string {
	if a < numPoints {
		return actionNames[a].print
	}
	return fmt.Sprintf("XDPAction(%d)", uint32(a))
}

// KernelName returns the name linux/bpf.h gives the action, such as "XDP_PASS".
func (a Action) KernelName() string {
	if a < numPoints {
		return actionNames[a].kernel
	}
	return fmt.Sprintf("XDP_%d", uint32(a))
}

// Name returns the action's lower-case name, such as "pass" (or "entry"),
// as L4Drop's rules and xdpcap's -actions flag spell it; "action7" for an
// action with no name.
func (a Action) Name() string {
	if a < numPoints {
		return actionNames[a].short
	}
	return fmt.Sprintf("action%d", uint32(a))
}

// ParseAction parses an action name: "pass", "XDP_PASS", "XDPPass" and "2"
// all name XDP_PASS; case does not matter.
func ParseAction(s string) (Action, error) {
	for _, a := range Actions {
		for _, name := range []string{a.Name(), a.KernelName(), a.String(), fmt.Sprint(uint32(a))} {
			if strings.EqualFold(s, name) {
				return a, nil
			}
		}
	}
	return 0, fmt.Errorf("unknown XDP action %q (want aborted, drop, pass, tx or redirect)", s)
}

// ParseActions parses a comma-separated list of action names
// (ParseAction), or "none" for an empty list; an action named twice is an
// error.
func ParseActions(list string) ([]Action, error) {
	actions := []Action{}
	if strings.TrimSpace(list) == "none" {
		return actions, nil
	}
	for _, name := range strings.Split(list, ",") {
		a, err := ParseAction(strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		if slices.Contains(actions, a) {
			return nil, fmt.Errorf("%s given twice", a.KernelName())
		}
		actions = append(actions, a)
	}
	return actions, nil
}

// ErrNotHook is returned when a map, or a pinned object, is not an xdpcap
// hook: not a program array, or of the wrong key or value size, or with too
// few slots.
var ErrNotHook = errors.New("not an xdpcap hook")

// ErrNoEntry is returned by Start for an entry capture on a hook whose
// program does not support one: a hook of fewer than NumSlots slots, or
// with no body in BodySlot.
var ErrNoEntry = errors.New("the hook's XDP program does not support capture at entry")

// HookMapSpec returns the spec of a hook named name: a program array with
// 4-byte keys and values and NumSlots slots, as xdpcap.h's XDPCAP_HOOK.
func HookMapSpec(name string) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.ProgramArray,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: NumSlots,
	}
}

// SetBody puts body, the program's body (the XDP program without its
// xdpcap_entry call), in hook's BodySlot, where an entry filter tail calls
// it. A loader calls it after loading the programs and before attaching
// the one with the xdpcap_entry call, and again on every reload. body
// must be of the same kind as the hook's other programs (the kernel
// checks): the same ELF section, SEC("xdp"), is enough.
func SetBody(hook *ebpf.Map, body *ebpf.Program) error {
	if err := CheckHook(hook); err != nil {
		return err
	}
	if hook.MaxEntries() <= BodySlot {
		return fmt.Errorf("%w: the hook has %d slots, want %d", ErrNoEntry, hook.MaxEntries(), BodySlot+1)
	}
	if err := hook.Update(uint32(BodySlot), body, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("put the body program in the hook: %w", err)
	}
	return nil
}

// NewHook creates a hook that is not pinned. It lives as long as a file
// descriptor or a program that uses it holds it.
func NewHook() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(HookMapSpec("xdpcap_hook"))
	if err != nil {
		return nil, fmt.Errorf("create xdpcap hook: %w", err)
	}
	return m, nil
}

// CreateHook creates a hook and pins it at path, on a BPF file system. It
// fails if something is pinned there already.
func CreateHook(path string) (*ebpf.Map, error) {
	m, err := NewHook()
	if err != nil {
		return nil, err
	}
	if err := m.Pin(path); err != nil {
		m.Close()
		return nil, fmt.Errorf("pin xdpcap hook: %w", err)
	}
	return m, nil
}

// OpenHook opens the hook pinned at path and checks that it is one.
func OpenHook(path string) (*ebpf.Map, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("hook %s: %w", path, err)
	}
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return nil, fmt.Errorf("hook %s: %w (is it a pinned BPF map?)", path, err)
	}
	if err := CheckHook(m); err != nil {
		m.Close()
		return nil, fmt.Errorf("hook %s: %w", path, err)
	}
	return m, nil
}

// OpenOrCreateHook opens the hook pinned at path, or creates and pins one
// if nothing is pinned there. Programs that expose a hook use it at load so
// that a hook outlives their restarts and a running capture keeps working.
func OpenOrCreateHook(path string) (*ebpf.Map, error) {
	m, err := OpenHook(path)
	if errors.Is(err, os.ErrNotExist) {
		return CreateHook(path)
	}
	return m, err
}

// CheckHook returns an error wrapping ErrNotHook unless m is a program
// array with 4-byte keys and values and at least a slot per XDP action.
func CheckHook(m *ebpf.Map) error {
	return checkHookShape(m.Type(), m.KeySize(), m.ValueSize(), m.MaxEntries())
}

func checkHookShape(typ ebpf.MapType, key, value, entries uint32) error {
	switch {
	case typ != ebpf.ProgramArray:
		return fmt.Errorf("%w: map type is %s, want %s", ErrNotHook, typ, ebpf.ProgramArray)
	case key != 4 || value != 4:
		return fmt.Errorf("%w: key and value sizes are %d and %d bytes, want 4 and 4", ErrNotHook, key, value)
	case entries < NumActions:
		return fmt.Errorf("%w: %d slots, want at least %d (one per XDP action)", ErrNotHook, entries, NumActions)
	}
	return nil
}

// HookReplacements returns the map replacements that make the programs of
// spec use the given hooks: hooks maps the name of a map in spec (say
// "xdpcap_hook", as xdpcap.h's XDPCAP_HOOK defines it) to a hook, usually
// one from OpenOrCreateHook. Pass the result as
// ebpf.CollectionOptions.MapReplacements. It checks that every named map is
// in spec and declared as a hook.
func HookReplacements(spec *ebpf.CollectionSpec, hooks map[string]*ebpf.Map) (map[string]*ebpf.Map, error) {
	repl := make(map[string]*ebpf.Map, len(hooks))
	for name, hook := range hooks {
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("hook map %q: not in the collection", name)
		}
		if err := checkHookShape(ms.Type, ms.KeySize, ms.ValueSize, ms.MaxEntries); err != nil {
			return nil, fmt.Errorf("map %q of the collection: %w", name, err)
		}
		if err := CheckHook(hook); err != nil {
			return nil, fmt.Errorf("hook for map %q: %w", name, err)
		}
		if ms.MaxEntries != hook.MaxEntries() {
			return nil, fmt.Errorf("hook for map %q has %d slots, the collection declares %d", name, hook.MaxEntries(), ms.MaxEntries)
		}
		repl[name] = hook
	}
	return repl, nil
}
