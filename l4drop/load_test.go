package l4drop_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
)

const rules = `
sample_rate: 0
rules:
  - name: udp-5353
    expr: "udp dst port 5353"
    locations: [ams]
  - name: udp-7
    expr: "udp dst port 7"
`

func buildYAML(t *testing.T, text string) []byte {
	t.Helper()
	rs, err := build.ParseRuleSet("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func counts(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	h, err := l4drop.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	st, err := h.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, r := range st.Rules {
		out[r.Name] = r.Packets
	}
	return out
}

// pinNames lists the pin directory, to see that a failed load leaves it
// as it was.
func pinNames(t *testing.T, dir string) string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// TestLoadFailsCleanly: every load that fails, before or after the swap,
// leaves the loaded rule set attached, pinned and counting, with its
// counters.
func TestLoadFailsCleanly(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	obj := buildYAML(t, rules)
	other := buildYAML(t, strings.ReplaceAll(rules, "udp-7", "udp-9"))
	base := l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root, Location: "ams", Mode: "generic"}
	l, err := l4drop.Load(obj, base)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	dir := l.Dir
	defer l4drop.Unload(dir)
	pins := pinNames(t, dir)

	oldVersion := bytes.Replace(other, fmt.Appendf(nil, `{"version":%d,`, l4drop.MetaVersion), []byte(`{"version":0,`), 1)
	if bytes.Equal(oldVersion, other) {
		t.Fatal("metadata version not found in the ELF")
	}
	tests := []struct {
		name string
		obj  []byte
		opts func(o *l4drop.LoadOptions)
		hook func() error
		want string
	}{
		{"enable and disable", other, func(o *l4drop.LoadOptions) { o.Enable, o.Disable = []string{"udp-9"}, []string{"udp-9"} }, nil, `"udp-9" is both enabled and disabled`},
		{"unknown location", other, func(o *l4drop.LoadOptions) { o.Location = "nowhere" }, nil, `location "nowhere"`},
		{"unknown rule", other, func(o *l4drop.LoadOptions) { o.Disable = []string{"nope"} }, nil, `"nope"`},
		{"mode changes on replace", other, func(o *l4drop.LoadOptions) { o.Mode = "native" }, nil, "--mode native"},
		{"bad mode", other, func(o *l4drop.LoadOptions) { o.Mode = "fast" }, nil, `mode "fast"`},
		{"older l4drop", oldVersion, nil, nil, "version 0"},
		{"not an ELF", []byte("rules: []\n"), nil, nil, "ELF"},
		{"fails after the swap", other, nil, func() error { return errors.New("injected failure") }, "injected failure"},
	}
	sent := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := base
			if tt.opts != nil {
				tt.opts(&opts)
			}
			if tt.hook != nil {
				defer l4drop.SetTestHookAfterAttach(tt.hook)()
			}
			_, err := l4drop.Load(tt.obj, opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load: %v, want an error with %q", err, tt.want)
			}
			if got := pinNames(t, dir); got != pins {
				t.Errorf("pins after a failed load: %s, want %s", got, pins)
			}
			fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 7, 3)
			sent += 3
			time.Sleep(50 * time.Millisecond)
			c := counts(t, dir)
			if c["udp-7"] != uint64(sent) || c["udp-9"] != 0 {
				t.Errorf("after a failed load the loaded set counted %v, want udp-7 %d", c, sent)
			}
		})
	}
}

// TestLoadKeepsCounters: a reload keeps the counts of the rules it keeps
// (same name, action and matchers), and starts a changed rule from zero.
func TestLoadKeepsCounters(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	opts := l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: fixture.BPFFS(t), Location: "ams"}
	l, err := l4drop.Load(buildYAML(t, rules), opts)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	defer l4drop.Unload(l.Dir)
	fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 7, 4)
	fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 5353, 2)
	time.Sleep(50 * time.Millisecond)
	// udp-7 kept, udp-5353 passes now.
	changed := strings.Replace(rules, "    locations: [ams]\n", "    locations: [ams]\n    action: pass\n", 1)
	if l, err = l4drop.Load(buildYAML(t, changed), opts); err != nil {
		t.Fatal(err)
	}
	l.Close()
	fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 7, 1)
	time.Sleep(50 * time.Millisecond)
	if c := counts(t, l.Dir); c["udp-7"] != 5 || c["udp-5353"] != 0 {
		t.Errorf("after a reload: %v, want udp-7 5 (4 carried + 1), udp-5353 0 (changed)", c)
	}
}

// TestLoadLock: while a load holds an interface, another fails at once
// naming it, and leaves no pin directory.
func TestLoadLock(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	opts := l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root}
	obj := buildYAML(t, rules)
	entered, release := make(chan struct{}), make(chan struct{})
	defer l4drop.SetTestHookAfterAttach(func() error {
		close(entered)
		<-release
		return nil
	})()
	first := make(chan error, 1)
	go func() {
		l, err := l4drop.Load(obj, opts)
		if err == nil {
			l.Close()
		}
		first <- err
	}()
	select {
	case <-entered:
	case err := <-first:
		t.Fatalf("first load: %v", err)
	}
	_, err := l4drop.Load(obj, opts)
	close(release)
	if !errors.Is(err, l4drop.ErrBusy) || !strings.Contains(err.Error(), "another l4drop is loading on "+lab.ServerIf) {
		t.Errorf("second load: %v, want ErrBusy naming %s", err, lab.ServerIf)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	dir := l4drop.Dir(root, lab.ServerIf, lab.Server.Name)
	defer l4drop.Unload(dir)
	if _, err := os.Stat(filepath.Join(dir, l4drop.PinLink)); err != nil {
		t.Errorf("the first load: %v", err)
	}
}

// TestLoadKeepsAutoRules: auto rules deployed at run time, their deployment
// times and their count survive a reload of the rule set (a restarted
// daemon loads again and adopts them), and keep dropping.
func TestLoadKeepsAutoRules(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	opts := l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: fixture.BPFFS(t), Location: "ams"}
	obj := buildYAML(t, rules)
	l, err := l4drop.Load(obj, opts)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	defer l4drop.Unload(l.Dir)
	h, err := l4drop.Open(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	udp9 := l4drop.AutoRule{State: l4drop.AutoDrop, Family: 4, Proto: 17,
		Conds: []l4drop.AutoCond{{Base: l4drop.BaseL4, Size: 2, Off: 2, Mask: 0xffff, Min: 9, Max: 9}}}
	err = h.SetAutoRule(1, udp9)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	if l, err = l4drop.Load(obj, opts); err != nil {
		t.Fatal(err)
	}
	l.Close()
	h, err = l4drop.Open(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	autos, err := h.AutoRules()
	if err != nil {
		t.Fatal(err)
	}
	if len(autos) != 2 || autos[1].Rule.Expr() != udp9.Expr() || autos[1].Since.IsZero() || autos[0].Rule.State != l4drop.AutoOff {
		t.Fatalf("after a reload: %+v, want slot 1 = %s", autos, udp9.Expr())
	}
	fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 9, 3)
	time.Sleep(50 * time.Millisecond)
	st, err := h.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Auto) != 1 || st.Auto[0].Slot != 1 || st.Auto[0].Packets != 3 {
		t.Errorf("auto rules after a reload: %+v, want slot 1 alone, counting 3 packets", st.Auto)
	}
}
