package build

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/xdpcap"
)

// TestXdpcapEntry captures at the entry of a loaded rule set, and at its
// drop exit, on real packets through a veth: each packet shows at entry,
// the dropped ones at the exit too, and the rule set's verdicts do not
// change. The capture keeps working across a reload, which puts the new
// rule set's body in the hook. The hook an older l4drop pinned (5 slots)
// is replaced on load, unless a capture runs on it. The interface runs the
// quiet twin, which makes no tail call into the hook, except while the
// capture runs, and after a reload the new rule set's.
func TestXdpcapEntry(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	dir := l4drop.Dir(root, lab.ServerIf, lab.Server.Name)
	t.Cleanup(func() { os.RemoveAll(dir) })

	// An older l4drop's hook, with a capture's filter in it: refused.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	old := xdpcap.HookMapSpec("xdpcap_hook")
	old.MaxEntries = xdpcap.NumActions
	oldHook, err := ebpf.NewMap(old)
	if err != nil {
		t.Fatal(err)
	}
	defer oldHook.Close()
	if err := oldHook.Pin(filepath.Join(dir, l4drop.PinHook)); err != nil {
		t.Fatal(err)
	}
	filter, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "xdpcap_drop", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(xdpcap.Drop)), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer filter.Close()
	if err := oldHook.Update(uint32(xdpcap.Drop), filter, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	_, err = l4drop.Load(obj, l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root})
	if !errors.Is(err, xdpcap.ErrHookBusy) {
		t.Fatalf("load over a 5-slot hook with a capture's filter: %v, want ErrHookBusy", err)
	}
	if _, err := os.Stat(filepath.Join(dir, l4drop.PinLink)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused load left a link pinned (%v)", err)
	}
	// The same hook without the filter is replaced.
	if err := oldHook.Delete(uint32(xdpcap.Drop)); err != nil {
		t.Fatal(err)
	}
	l := loadOnServer(t, lab, root, obj, l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	hook, err := xdpcap.OpenHook(filepath.Join(l.Dir, l4drop.PinHook))
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	if hook.MaxEntries() != xdpcap.NumSlots {
		t.Fatalf("pinned hook has %d slots, want %d", hook.MaxEntries(), xdpcap.NumSlots)
	}
	body := bodyID(t, hook)
	if body == 0 {
		t.Fatal("no body in the hook after load")
	}
	runs := func(when string, want uint32) {
		t.Helper()
		if got := linkProgram(t, l.Dir); got != slotID(t, hook, want) || got == 0 {
			t.Fatalf("%s: the link runs program %d; the quiet twin is %d, the loud program %d", when, got, slotID(t, hook, xdpcap.QuietSlot), slotID(t, hook, xdpcap.LoudSlot))
		}
	}
	runs("after load", xdpcap.QuietSlot)

	// The kernel's own packets (IPv6 router solicitations, MLD) reach the
	// entry too: capture only the test's.
	expr, err := cbpf.Compile("tcp dst port 80 or udp dst port 9999", cbpf.LinkTypeEthernet, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := xdpcap.Start([]*ebpf.Map{hook}, xdpcap.Options{Filter: expr, Entry: true, Actions: []xdpcap.Action{xdpcap.Drop, xdpcap.Pass},
		PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runs("capturing", xdpcap.LoudSlot)
	syn := fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 80)
	legit := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 9999, []byte("legitimate"))
	var want []xdpcap.Packet
	for round := range 2 {
		if round == 1 {
			// A reload: the capture goes on, through the new body.
			if _, err := l4drop.Load(obj, l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root}); err != nil {
				t.Fatal(err)
			}
			if id := bodyID(t, hook); id == 0 || id == body {
				t.Fatalf("body after reload: program %d, before %d; want a new one", id, body)
			}
			runs("reloaded while capturing", xdpcap.LoudSlot)
		}
		sendFrames(t, lab.Client, lab.ClientIf, [][]byte{syn, legit})
		want = append(want,
			xdpcap.Packet{Action: xdpcap.Entry, Data: syn}, xdpcap.Packet{Action: xdpcap.Drop, Data: syn},
			xdpcap.Packet{Action: xdpcap.Entry, Data: legit}, xdpcap.Packet{Action: xdpcap.Pass, Data: legit})
		waitMatched(t, c, uint64(len(want)))
	}
	stats, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(); err != nil {
		t.Fatal(err)
	}
	runs("after the capture", xdpcap.QuietSlot)
	var got []xdpcap.Packet
	for {
		p, err := c.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	if len(got) != len(want) {
		t.Fatalf("captured %d packets, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Action != w.Action || !bytes.Equal(got[i].Data, w.Data) {
			t.Errorf("packet %d: %v % x, want %v % x", i, got[i].Action, got[i].Data, w.Action, w.Data)
		}
	}
	if e := stats.Action(xdpcap.Entry); e.Matched != 4 || e.Lost != 0 {
		t.Errorf("entry counters %+v, want 4 matched, 0 lost", e)
	}
	h := openLoaded(t, l)
	st, err := h.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	synCount := -1
	for _, r := range st.Rules {
		if r.Name == "syn-80" {
			synCount = int(r.Packets)
		}
	}
	if synCount != 2 {
		t.Errorf("rule syn-80 counted %d packets, want 2 (-1: no such rule)", synCount)
	}
}

// bodyID returns the ID of the program in hook's body slot, 0 for none.
func bodyID(t *testing.T, hook *ebpf.Map) uint32 {
	t.Helper()
	return slotID(t, hook, xdpcap.BodySlot)
}

// slotID returns the ID of the program in hook[slot], 0 for none.
func slotID(t *testing.T, hook *ebpf.Map, slot uint32) uint32 {
	t.Helper()
	var id uint32
	if err := hook.Lookup(slot, &id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return id
}

// linkProgram returns the ID of the program the link pinned in dir runs.
func linkProgram(t *testing.T, dir string) uint32 {
	t.Helper()
	prog, err := l4drop.Running(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	return uint32(fixture.ProgramID(t, prog))
}

// waitMatched waits until the capture's filters matched n packets.
func waitMatched(t *testing.T, c *xdpcap.Capture, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := c.Stats()
		if err != nil {
			t.Fatal(err)
		}
		m := s.Total().Matched
		if m >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the capture matched %d packets, want %d", m, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
