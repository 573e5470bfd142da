package xdpcap

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
)

// actionProgram returns an XDP program, built in Go with ExitReg, that
// ends with the action named by the packet's first byte (pass if it names
// none) through hook.
func actionProgram(t testing.TB, hook *ebpf.Map, frags bool) *ebpf.Program {
	t.Helper()
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Imm(asm.R7, int32(Pass)),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 1),
		asm.JGT.Reg(asm.R4, asm.R3, "exit"),
		asm.LoadMem(asm.R7, asm.R2, 0, asm.Byte),
		asm.JLT.Imm(asm.R7, NumActions, "exit"),
		asm.Mov.Imm(asm.R7, int32(Pass)),
	}
	exit, err := ExitReg(asm.R6, "hook", asm.R7)
	if err != nil {
		t.Fatal(err)
	}
	exit[0] = exit[0].WithSymbol("exit")
	insns = append(insns, exit...)
	if err := insns.AssociateMap("hook", hook); err != nil {
		t.Fatal(err)
	}
	spec := &ebpf.ProgramSpec{Name: "test_actions", Type: ebpf.XDP, Instructions: insns, License: "GPL"}
	if frags {
		spec.Flags = bpfFXDPHasFrags
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// readAll reads a detached capture to its end.
func readAll(t testing.TB, c *Capture) []Packet {
	t.Helper()
	var pkts []Packet
	for {
		p, err := c.Read()
		if errors.Is(err, io.EOF) {
			return pkts
		}
		if err != nil {
			t.Fatal(err)
		}
		pkts = append(pkts, p)
	}
}

// hookEmpty fails the test unless every slot of hook is empty.
func hookEmpty(t testing.TB, hook *ebpf.Map) {
	t.Helper()
	for slot := uint32(0); slot < NumActions; slot++ {
		if id, name, err := slotProgram(hook, slot); err != nil || id != 0 {
			t.Errorf("hook slot %s holds program %d %q (%v)", Action(slot), id, name, err)
		}
	}
}

func TestCaptureTestRun(t *testing.T) {
	fixture.RequireRoot(t)
	runner := fixture.NewXDPRunner(t)
	bpffs := fixture.BPFFS(t)

	for _, tc := range []struct {
		name    string
		perf    bool
		frags   bool
		snapLen int
		actions []Action
	}{
		{"ring", false, false, 0, nil},
		{"perf", true, false, 0, nil},
		{"ring frags", false, true, 0, nil},
		{"perf frags", true, true, 0, nil},
		{"ring snaplen", false, false, 100, nil},
		{"perf snaplen", true, false, 100, nil},
		{"drop and tx only", false, false, 0, []Action{Drop, TX}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook, err := CreateHook(filepath.Join(bpffs, filepath.Base(t.Name())))
			if err != nil {
				t.Fatal(err)
			}
			defer hook.Close()
			prog := actionProgram(t, hook, tc.frags)

			c, err := Start([]*ebpf.Map{hook}, Options{Actions: tc.actions, SnapLen: tc.snapLen, Perf: tc.perf})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			sizes := []int{14, 60, 64, 65, 129, 1514, 3000}
			if tc.frags {
				sizes = append(sizes, 9000, 20000)
			}
			snap := tc.snapLen
			if snap == 0 {
				snap = DefaultSnapLen
			}
			wanted := map[Action]bool{}
			for _, a := range tc.actions {
				wanted[a] = true
			}
			var want []Packet
			var sent [NumActions]uint64
			start := time.Now()
			for i, size := range sizes {
				for a := Action(0); a <= NumActions; a++ { // NumActions: passes
					pkt := make([]byte, size)
					pkt[0] = byte(a)
					for j := 1; j < size; j++ {
						pkt[j] = byte(i + j)
					}
					got, err := runner.Run(prog, pkt)
					if err != nil {
						t.Fatal(err)
					}
					wantAction := a
					if a == NumActions {
						wantAction = Pass
					}
					if Action(got) != wantAction {
						t.Fatalf("program returned %v, want %v", Action(got), wantAction)
					}
					sent[wantAction]++
					if tc.actions == nil || wanted[wantAction] {
						want = append(want, Packet{Action: wantAction, Length: size, Data: pkt[:min(size, snap)]})
					}
				}
			}
			stats, err := c.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Detach(); err != nil {
				t.Fatal(err)
			}
			hookEmpty(t, hook)
			got := readAll(t, c)

			if len(got) != len(want) {
				t.Fatalf("captured %d packets, want %d", len(got), len(want))
			}
			for i := range want {
				g, w := got[i], want[i]
				if g.Action != w.Action || g.Length != w.Length || !bytes.Equal(g.Data, w.Data) || g.Hook != 0 {
					t.Errorf("packet %d: action %v length %d captured %d hook %d, want %v %d %d 0 (bytes equal: %v)",
						i, g.Action, g.Length, len(g.Data), g.Hook, w.Action, w.Length, len(w.Data), bytes.Equal(g.Data, w.Data))
				}
				if g.Time.Before(start.Add(-time.Second)) || g.Time.After(time.Now().Add(time.Second)) {
					t.Errorf("packet %d: time %v, not within the test", i, g.Time)
				}
			}
			for _, a := range Actions {
				wantSeen := sent[a]
				if tc.actions != nil && !wanted[a] {
					wantSeen = 0
				}
				if s := stats.Action(a); s.Seen != wantSeen || s.Matched != wantSeen || s.Lost != 0 {
					t.Errorf("%v counters %+v, want seen = matched = %d, lost 0", a, s, wantSeen)
				}
			}
		})
	}
}

func TestCaptureLocks(t *testing.T) {
	fixture.RequireRoot(t)
	hook, err := CreateHook(filepath.Join(fixture.BPFFS(t), "hook"))
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()

	if _, err := Start([]*ebpf.Map{hook}, Options{}); !errors.Is(err, ErrNoProgram) {
		t.Errorf("capture on a hook no program uses: err = %v, want ErrNoProgram", err)
	}
	actionProgram(t, hook, false)
	if _, err := Start([]*ebpf.Map{hook, hook}, Options{}); err == nil || errors.Is(err, ErrHookBusy) {
		t.Errorf("the same hook twice: err = %v, want a complaint about the duplicate", err)
	}
	c, err := Start([]*ebpf.Map{hook}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Start([]*ebpf.Map{hook}, Options{}); !errors.Is(err, ErrHookBusy) {
		t.Errorf("second capture on a hook: err = %v, want ErrHookBusy", err)
	}
	if _, err := Clear(hook); !errors.Is(err, ErrHookBusy) {
		t.Errorf("Clear during a capture: err = %v, want ErrHookBusy", err)
	}
	if n, err := ClearStale(hook); n != 0 || err != nil {
		t.Errorf("ClearStale during a capture: %d, %v; want 0, nil", n, err)
	}
	if busy, err := Capturing(hook); !busy || err != nil {
		t.Errorf("after ClearStale during a capture: capturing %v, %v", busy, err)
	}

	// A capture that dies without cleaning up leaves its filters and
	// releases its lock; simulate it by dropping the lock only.
	for _, l := range c.locks {
		l.unlock()
	}
	c.locks = nil
	n, err := Clear(hook)
	if err != nil || n != NumActions {
		t.Errorf("Clear removed %d filters (%v), want %d", n, err, NumActions)
	}
	hookEmpty(t, hook)
	c.Close()

	// A lock held for a moment, as l4drop run's ClearStale holds it, is
	// waited for.
	l, err := lockHook(hook, 0)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(lockWait/4, l.unlock)
	c, err = Start([]*ebpf.Map{hook}, Options{})
	if err != nil {
		t.Fatalf("capture while the lock is held for %v: %v", lockWait/4, err)
	}
	c.Close()

	// A foreign program in a slot is not ours to remove.
	other := actionProgram(t, hook, false)
	if err := hook.Update(uint32(Drop), other, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if _, err := Start([]*ebpf.Map{hook}, Options{}); err == nil {
		t.Error("capture over a foreign program in a slot started")
	}
	if n, err := Clear(hook); err != nil || n != 0 {
		t.Errorf("Clear removed %d programs (%v), want none", n, err)
	}
	c2, err := Start([]*ebpf.Map{hook}, Options{Actions: []Action{Pass}})
	if err != nil {
		t.Fatalf("capture of another slot: %v", err)
	}
	c2.Close()
	info, _ := hook.Info()
	mapID, _ := info.ID()
	if _, err := os.Stat(filepath.Join(LockDir, fmt.Sprintf("hook-%d.lock", mapID))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left after Close: %v", err)
	}
	if id, _, _ := slotProgram(hook, uint32(Drop)); id == 0 {
		t.Error("the foreign program was removed")
	}
}
