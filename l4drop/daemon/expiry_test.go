package daemon_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/daemon"
)

// TestExpiry: rules with until and expires are switched off within a
// second of their time, not before, and then stop matching.
func TestExpiry(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	until := time.Now().Add(2500 * time.Millisecond).UTC()
	obj := buildYAML(t, fmt.Sprintf(`
rules:
  - name: until-rule
    expr: "udp dst port 5353"
    until: %s
  - name: expires-rule
    expr: "udp dst port 7"
    expires: 1500ms
  - name: stays
    expr: "udp dst port 9"
`, until.Format(time.RFC3339Nano)))
	opts := l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root}
	d, err := daemon.New(daemon.Config{
		Object: func(context.Context) ([]byte, error) { return obj, nil },
		Load:   opts, Tick: 100 * time.Millisecond, Components: []daemon.Component{daemon.NewExpiry()},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := time.Now()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	dir := l4drop.Dir(root, lab.ServerIf, lab.Server.Name)
	defer l4drop.Unload(dir)

	due := map[string]time.Time{"until-rule": until, "expires-rule": started.Add(1500 * time.Millisecond)}
	off := map[string]time.Time{}
	for time.Since(started) < 10*time.Second && len(off) < len(due) {
		h, err := l4drop.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		for i, r := range h.State.Meta.Rules {
			if _, seen := off[r.Name]; !seen && !h.State.Enabled[i] {
				off[r.Name] = now
			}
		}
		h.Close()
		time.Sleep(20 * time.Millisecond)
	}
	// Switching off is a reload; what one costs on this machine now (a
	// loaded, shared one: seconds at worst) comes on top of the second.
	t0 := time.Now()
	if err := d.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	reload := time.Since(t0)
	for name, at := range due {
		gone, ok := off[name]
		switch {
		case !ok:
			t.Errorf("%s: still on 10 s after the start, due %v after it", name, at.Sub(started))
		case gone.Before(at):
			t.Errorf("%s: off %v before its time", name, at.Sub(gone))
		case gone.Sub(at) > time.Second+2*reload:
			t.Errorf("%s: off %v after its time, want within 1 s (+ 2 reloads, %v)", name, gone.Sub(at), 2*reload)
		default:
			t.Logf("%s: off %v after its time (a reload takes %v)", name, gone.Sub(at).Round(time.Millisecond), reload.Round(time.Millisecond))
		}
	}
	if _, ok := off["stays"]; ok {
		t.Errorf("rule stays was switched off")
	}
	// Switched off means no longer matching.
	send(t, lab, 3, 5353)
	send(t, lab, 3, 9)
	if n := packets(t, dir, "until-rule"); n != 0 {
		t.Errorf("until-rule matched %d packets after its time", n)
	}
	if n := packets(t, dir, "stays"); n != 3 {
		t.Errorf("stays matched %d packets, want 3", n)
	}
}
