// Package xdpcaptest holds what the xdpcap package's tests and the xdpcap
// command's tests share: the example C program, built and loaded. Attaching
// programs and sending traffic are in internal/fixture.
package xdpcaptest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/internal/fixture"
)

// bodySlot is xdpcap.BodySlot.
const bodySlot = 6

// BuildExample builds xdpcap/testdata/example.c with clang and returns its
// collection spec. The example uses xdpcap.h's XDPCAP_HOOK(xdpcap_hook)
// and has two programs: xdp_example, to attach, and xdp_example_body, its
// body for the hook's body slot.
func BuildExample(tb testing.TB) *ebpf.CollectionSpec {
	tb.Helper()
	if _, err := clang.Binary(); errors.Is(err, clang.ErrNotFound) {
		if fixture.InCI() {
			tb.Fatal(err)
		}
		tb.Skip(err)
	}
	dir := filepath.Join(fixture.ModuleRoot(tb), "xdpcap")
	src, err := os.ReadFile(filepath.Join(dir, "testdata", "example.c"))
	if err != nil {
		tb.Fatal(err)
	}
	obj, err := clang.Compile(context.Background(), string(src), "-I"+dir, "-I/usr/include/x86_64-linux-gnu", "-Werror")
	if err != nil {
		tb.Fatal(err)
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		tb.Fatal(err)
	}
	return spec
}

// LoadExample builds and loads the example with hook as its xdpcap_hook,
// puts its body in the hook's body slot, and returns the program to
// attach; it is closed at cleanup.
func LoadExample(tb testing.TB, hook *ebpf.Map) *ebpf.Program {
	tb.Helper()
	spec := BuildExample(tb)
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{"xdpcap_hook": hook},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { coll.Close() })
	// xdpcap.SetBody, which the xdpcap package's own tests cannot import
	// from here.
	if err := hook.Update(uint32(bodySlot), coll.Programs["xdp_example_body"], ebpf.UpdateAny); err != nil {
		tb.Fatal(err)
	}
	return coll.Programs["xdp_example"]
}
