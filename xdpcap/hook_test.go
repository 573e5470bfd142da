package xdpcap

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/xdpcap/xdpcaptest"
)

func TestParseAction(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Action
		ok   bool
	}{
		{"pass", Pass, true},
		{"XDP_DROP", Drop, true},
		{"XDPTx", TX, true},
		{"redirect", Redirect, true},
		{"0", Aborted, true},
		{"ABORTED", Aborted, true},
		{"drops", 0, false},
		{"5", 0, false},
		{"", 0, false},
	} {
		got, err := ParseAction(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseAction(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestActionNames(t *testing.T) {
	for _, tc := range []struct {
		a                 Action
		str, kernel, name string
	}{
		{Aborted, "XDPAborted", "XDP_ABORTED", "aborted"},
		{Drop, "XDPDrop", "XDP_DROP", "drop"},
		{Pass, "XDPPass", "XDP_PASS", "pass"},
		{TX, "XDPTx", "XDP_TX", "tx"},
		{Redirect, "XDPRedirect", "XDP_REDIRECT", "redirect"},
		{Entry, "Entry", "entry", "entry"},
		{Action(9), "XDPAction(9)", "XDP_9", "action9"},
	} {
		if got := tc.a.String(); got != tc.str {
			t.Errorf("Action(%d).String() = %q, want %q", uint32(tc.a), got, tc.str)
		}
		if got := tc.a.KernelName(); got != tc.kernel {
			t.Errorf("Action(%d).KernelName() = %q, want %q", uint32(tc.a), got, tc.kernel)
		}
		if got := tc.a.Name(); got != tc.name {
			t.Errorf("Action(%d).Name() = %q, want %q", uint32(tc.a), got, tc.name)
		}
		if tc.a >= NumActions {
			continue
		}
		// Every name an action prints is one ParseAction takes back.
		for _, n := range []string{tc.str, tc.kernel, tc.name} {
			if got, err := ParseAction(n); err != nil || got != tc.a {
				t.Errorf("ParseAction(%q) = %v, %v; want %v", n, got, err, tc.a)
			}
		}
	}
}

func TestOpenHook(t *testing.T) {
	fixture.RequireRoot(t)
	dir := fixture.BPFFS(t)

	good := filepath.Join(dir, "good")
	h, err := CreateHook(good)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if _, err := CreateHook(good); err == nil {
		t.Error("CreateHook over an existing pin succeeded")
	}

	pin := func(name string, spec *ebpf.MapSpec) string {
		t.Helper()
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		p := filepath.Join(dir, name)
		if err := m.Pin(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bigger := HookMapSpec("bigger")
	bigger.MaxEntries = 8
	small := HookMapSpec("small")
	small.MaxEntries = 4
	notFile := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(notFile, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		path    string
		wantErr error // nil: opens
	}{
		{"hook", good, nil},
		{"more slots", pin("bigger", bigger), nil},
		{"missing", filepath.Join(dir, "nothing"), os.ErrNotExist},
		{"array", pin("array", &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 5}), ErrNotHook},
		{"few slots", pin("small", small), ErrNotHook},
		{"plain file", notFile, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := OpenHook(tc.path)
			if tc.name == "plain file" {
				if err == nil {
					m.Close()
					t.Fatal("opened a plain file as a hook")
				}
				return
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				m.Close()
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}

	m, err := OpenOrCreateHook(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := os.Stat(filepath.Join(dir, "new")); err != nil {
		t.Errorf("OpenOrCreateHook did not pin: %v", err)
	}
}

func TestHookReplacements(t *testing.T) {
	fixture.RequireRoot(t)
	spec := xdpcaptest.BuildExample(t)
	hook, err := CreateHook(filepath.Join(fixture.BPFFS(t), "hook"))
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()

	if _, err := HookReplacements(spec, map[string]*ebpf.Map{"nope": hook}); err == nil {
		t.Error("replacement of a map not in the collection accepted")
	}
	arr, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer arr.Close()
	if _, err := HookReplacements(spec, map[string]*ebpf.Map{"xdpcap_hook": arr}); !errors.Is(err, ErrNotHook) {
		t.Errorf("array as hook: err = %v, want ErrNotHook", err)
	}

	repl, err := HookReplacements(spec, map[string]*ebpf.Map{"xdpcap_hook": hook})
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	hi, _ := hook.Info()
	ci, _ := coll.Maps["xdpcap_hook"].Info()
	hid, _ := hi.ID()
	cid, _ := ci.ID()
	if hid != cid {
		t.Errorf("collection uses map %d, want the pinned hook %d", cid, hid)
	}
}

func TestExitRegErrors(t *testing.T) {
	if _, err := ExitReg(asm.R1, "h", asm.R3); err == nil {
		t.Error("action in R3 accepted")
	}
	if _, err := ExitReg(asm.R2, "h", asm.R6); err == nil {
		t.Error("context in R2 accepted")
	}
	insns, err := ExitReg(asm.R6, "h", asm.R7)
	if err != nil || len(insns) != 6 {
		t.Errorf("ExitReg(R6, h, R7) = %d instructions, %v", len(insns), err)
	}
}
