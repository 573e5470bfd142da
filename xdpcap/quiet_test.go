package xdpcap

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestQuietTwin attaches a hook's quiet twin to a veth and checks that a
// capture's filter in the hook swaps the loud program in (SyncLinks, as a
// loader calls it) and that Clear, removing a killed capture's filter,
// swaps the twin back.
func TestQuietTwin(t *testing.T) {
	fixture.RequireRoot(t)
	hook, err := NewHook()
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	quiet, loud := fixture.PassProgram(t), fixture.ReturnProgram(t, int32(Pass))
	if err := SetQuiet(hook, quiet, loud); err != nil {
		t.Fatal(err)
	}
	lab := fixture.Lab(t)
	fixture.AttachXDP(t, lab.Server, lab.ServerIndex, quiet)
	runs := func(when string, want *ebpf.Program) {
		t.Helper()
		if got, wantID := linkProgram(t, lab.ServerIndex, quiet, loud), fixture.ProgramID(t, want); got != wantID {
			t.Fatalf("%s: the link runs program %d, want %d (quiet %d, loud %d)", when, got, wantID, fixture.ProgramID(t, quiet), fixture.ProgramID(t, loud))
		}
	}
	runs("attached", quiet)
	if busy, err := Capturing(hook); err != nil || busy {
		t.Fatalf("Capturing on an empty hook: %v, %v", busy, err)
	}
	if err := SyncLinks(hook); err != nil {
		t.Fatal(err)
	}
	runs("synced, nobody capturing", quiet)

	// A filter a capture killed with SIGKILL left behind.
	filter, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: progNamePrefix + "drop", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(Drop)), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer filter.Close()
	if err := hook.Update(uint32(Drop), filter, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if busy, err := Capturing(hook); err != nil || !busy {
		t.Fatalf("Capturing with a filter in the drop slot: %v, %v", busy, err)
	}
	if err := SyncLinks(hook); err != nil {
		t.Fatal(err)
	}
	runs("a filter in the hook", loud)
	if n, err := Clear(hook); err != nil || n != 1 {
		t.Fatalf("Clear: %d, %v; want 1 filter removed", n, err)
	}
	runs("cleared", quiet)
}

// TestSetQuietSlots: a hook without the twin's slots takes no twin.
func TestSetQuietSlots(t *testing.T) {
	fixture.RequireRoot(t)
	spec := HookMapSpec("old_hook")
	spec.MaxEntries = BodySlot + 1
	hook, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	if err := SetQuiet(hook, nil, nil); err != nil {
		t.Errorf("SetQuiet(nil, nil) on a %d-slot hook: %v", hook.MaxEntries(), err)
	}
	prog := fixture.PassProgram(t)
	if err := SetQuiet(hook, prog, prog); !errors.Is(err, ErrNoQuiet) {
		t.Errorf("SetQuiet on a %d-slot hook: %v, want ErrNoQuiet", hook.MaxEntries(), err)
	}
	// Nothing to swap, and no error, on such a hook.
	if err := SyncLinks(hook); err != nil {
		t.Errorf("SyncLinks on a %d-slot hook: %v", hook.MaxEntries(), err)
	}
}

// linkProgram returns the program of the XDP link on ifindex that runs
// one of progs. Links are matched by their programs too: an ifindex is a
// namespace's, and other tests' labs have the same ones.
func linkProgram(t *testing.T, ifindex int, progs ...*ebpf.Program) ebpf.ProgramID {
	t.Helper()
	ids := map[ebpf.ProgramID]bool{}
	for _, p := range progs {
		ids[fixture.ProgramID(t, p)] = true
	}
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.XDPType || !ids[info.Program] {
			continue
		}
		if x := info.XDP(); x != nil && int(x.Ifindex) == ifindex {
			return info.Program
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("no XDP link on interface %d runs one of the programs", ifindex)
	return 0
}
