// Package xdpcaptest holds what the xdpcap package's tests and the xdpcap
// command's tests share: building the example C program. Attaching programs
// and sending traffic are in internal/fixture.
package xdpcaptest

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// BuildExample builds xdpcap/testdata/example.c with clang and returns its
// collection spec. The example uses xdpcap.h's XDPCAP_HOOK(xdpcap_hook)
// and has one program, xdp_example.
func BuildExample(tb testing.TB) *ebpf.CollectionSpec {
	tb.Helper()
	if _, err := exec.LookPath("clang"); err != nil {
		if fixture.InCI() {
			tb.Fatal("clang missing")
		}
		tb.Skip("clang missing")
	}
	dir := filepath.Join(fixture.ModuleRoot(tb), "xdpcap")
	out := filepath.Join(tb.TempDir(), "example.o")
	cmd := exec.Command("clang", "-O2", "-g", "-target", "bpf", "-I"+dir, "-I/usr/include/x86_64-linux-gnu",
		"-Wall", "-Werror", "-c", filepath.Join(dir, "testdata", "example.c"), "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("clang: %v\n%s", err, b)
	}
	spec, err := ebpf.LoadCollectionSpec(out)
	if err != nil {
		tb.Fatal(err)
	}
	return spec
}
