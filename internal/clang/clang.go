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

// Compile builds C source into an eBPF ELF object with
// clang -O2 -g -target bpf and any extra arguments (say -I DIR), and
// returns the object. The error holds clang's output.
func Compile(ctx context.Context, source string, args ...string) ([]byte, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "l4drop-clang-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src, obj := filepath.Join(dir, "prog.c"), filepath.Join(dir, "prog.o")
	if err := os.WriteFile(src, []byte(source), 0o600); err != nil {
		return nil, err
	}
	cmdArgs := append([]string{"-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-variable", "-Wno-unused-function"}, args...)
	cmdArgs = append(cmdArgs, "-c", src, "-o", obj)
	cmd := exec.CommandContext(ctx, bin, cmdArgs...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", bin, err, strings.TrimSpace(out.String()))
	}
	return os.ReadFile(obj)
}
