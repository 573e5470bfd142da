// Package clang builds C source into eBPF ELF objects with clang.
package clang

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// ErrNotFound means no clang binary was found.
var ErrNotFound = errors.New("clang not found (install the Debian package clang)")

// Binary returns the clang to use: $CLANG, or clang, or the newest
// clang-N on $PATH.
func Binary() (string, error) {
	if c := os.Getenv("CLANG"); c != "" {
		return c, nil
	}
	if p, err := exec.LookPath("clang"); err == nil {
		return p, nil
	}
	for v := 30; v >= 11; v-- {
		if p, err := exec.LookPath(fmt.Sprintf("clang-%d", v)); err == nil {
			return p, nil
		}
	}
	return "", ErrNotFound
}

// multiarch maps GOARCH to Debian's multiarch tuple, the directory under
// /usr/include that holds the architecture's asm/ headers.
var multiarch = map[string]string{
	"amd64":    "x86_64-linux-gnu",
	"arm64":    "aarch64-linux-gnu",
	"386":      "i386-linux-gnu",
	"arm":      "arm-linux-gnueabihf",
	"ppc64le":  "powerpc64le-linux-gnu",
	"s390x":    "s390x-linux-gnu",
	"riscv64":  "riscv64-linux-gnu",
	"mips64le": "mips64el-linux-gnuabi64",
	"loong64":  "loongarch64-linux-gnu",
}

// IncludeDir is the directory of the host's architecture-specific headers,
// /usr/include/TUPLE (say /usr/include/x86_64-linux-gnu), or "" for an
// architecture Debian has no tuple for here.
//
// With -target bpf, clang searches neither it nor gcc-multilib's 32-bit
// stubs, so linux/bpf.h's #include <asm/types.h> fails on a machine
// without gcc-multilib. Compile adds it to the end of the search path
// (-idirafter); build commands written by hand need it too (-I).
func IncludeDir() string {
	if t, ok := multiarch[runtime.GOARCH]; ok {
		return "/usr/include/" + t
	}
	return ""
}

// Compile builds C source into an eBPF ELF object with
// clang -O2 -g -target bpf, any extra arguments (say
// -I DIR) and -idirafter [IncludeDir], and returns the object. The error
// holds clang's output.
func Compile(ctx context.Context, source string, args ...string) ([]byte, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "l4drop-clang-")
	if err != nil {
		return nil, fmt.Errorf("clang: %w", err)
	}
	defer os.RemoveAll(dir)
	src, obj := filepath.Join(dir, "prog.c"), filepath.Join(dir, "prog.o")
	if err := os.WriteFile(src, []byte(source), 0o600); err != nil {
		return nil, fmt.Errorf("clang: %w", err)
	}
	cmdArgs := []string{"-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-variable", "-Wno-unused-function"}
	// The caller's -I come first, so they are searched first.
	cmdArgs = append(cmdArgs, args...)
	if inc := IncludeDir(); inc != "" {
		cmdArgs = append(cmdArgs, "-idirafter", inc)
	}
	cmdArgs = append(cmdArgs, "-c", src, "-o", obj)
	cmd := exec.CommandContext(ctx, bin, cmdArgs...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", bin, err, strings.TrimSpace(out.String()))
	}
	b, err := os.ReadFile(obj)
	if err != nil {
		return nil, fmt.Errorf("clang: %w", err)
	}
	return b, nil
}
