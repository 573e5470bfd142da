package daemon_test

import (
	"bytes"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/daemon"
	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/xdpcap"
)

// TestCaptureWatch: a running capture is left alone; the filters of one
// killed with SIGKILL are removed within a few ticks, and the link runs the
// quiet twin again.
func TestCaptureWatch(t *testing.T) {
	fixture.RequireRoot(t)
	xdpcapBin := filepath.Join(fixture.BuildCommands(t, "./cmd/xdpcap"), "xdpcap")
	pair := fixture.Lab(t)
	root := fixture.BPFFS(t)
	obj := buildYAML(t, rules)
	log := &lab.Output{}
	_, dir := startDaemon(t, pair, root, obj, daemon.Config{
		Tick: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(log, nil)),
		Components: []daemon.Component{daemon.NewCaptureWatch()},
	})
	hookPath := filepath.Join(dir, l4drop.PinHook)
	hook, err := ebpf.LoadPinnedMap(hookPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	// state is whether a filter is in the hook, and whether the link runs
	// the loud program.
	state := func() (capturing, loud bool) {
		t.Helper()
		c, err := xdpcap.Capturing(hook)
		if err != nil {
			t.Fatal(err)
		}
		prog, err := l4drop.Running(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		id := fixture.ProgramID(t, prog)
		var loudID uint32
		if err := hook.Lookup(uint32(xdpcap.LoudSlot), &loudID); err != nil {
			t.Fatal(err)
		}
		return c, uint32(id) == loudID
	}
	wait := func(what string, capturing, loud bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, l := state()
			if c == capturing && l == loud {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: filters in the hook %v, loud program attached %v; want %v, %v\nlog:\n%s", what, c, l, capturing, loud, log)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	cmd := exec.Command(xdpcapBin, "-actions", "drop", hookPath, filepath.Join(t.TempDir(), "out.pcap"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	wait("capturing", true, true)
	// Many ticks: the watch leaves a running capture alone.
	time.Sleep(200 * time.Millisecond)
	if c, l := state(); !c || !l {
		t.Fatalf("a running capture: filters in the hook %v, loud program attached %v; the watch took them\nxdpcap: %s", c, l, &stderr)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	wait("after SIGKILL", false, false)
	// The log line comes once the twin is back: wait for it too.
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(log.String(), "removed the filters a killed capture left"); {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not say it removed them:\n%s", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
