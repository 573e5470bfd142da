package l4drop

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// ErrNoClang is returned when clang cannot be found.
var ErrNoClang = errors.New("clang not found (install Debian's clang, or pass its path)")

// Build compiles the rule set into an eBPF ELF object: Generate, then clang.
func Build(rs *RuleSet, opts BuildOptions) ([]byte, *Generated, error) {
	if opts.MaxProgramInsns <= 0 {
		opts.MaxProgramInsns = DefaultMaxProgramInsns
	}
	for {
		gen, err := Generate(rs, opts)
		if err != nil {
			return nil, nil, err
		}
		obj, err := compileC(gen.C, opts.Clang)
		if err != nil {
			return nil, gen, err
		}
		longest, err := longestProgram(obj)
		if err != nil {
			return nil, gen, err
		}
		// eBPF jumps reach 32767 instructions: a longer function may have
		// jumps the kernel refuses. Split finer and build again.
		if longest <= maxProgramLen || opts.MaxProgramInsns < 64 {
			return obj, gen, nil
		}
		opts.MaxProgramInsns /= 2
	}
}

const maxProgramLen = 32000

// longestProgram returns the size of the longest function in obj, in
// instruction slots: jumps stay within functions.
func longestProgram(obj []byte) (int, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		return 0, fmt.Errorf("read the built ELF: %w", err)
	}
	longest := 0
	for _, p := range spec.Programs {
		n := 0
		for _, ins := range p.Instructions {
			if ins.Symbol() != "" {
				n = 0
			}
			n += int(ins.Size() / asm.InstructionSize)
			longest = max(longest, n)
		}
	}
	return longest, nil
}

// compileC runs clang -O2 -g -target bpf over src and returns the object.
func compileC(src, clang string) ([]byte, error) {
	if clang == "" {
		clang = os.Getenv("CLANG")
	}
	if clang == "" {
		clang = "clang"
	}
	path, err := exec.LookPath(clang)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoClang, err)
	}
	dir, err := os.MkdirTemp("", "l4drop-build-")
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	defer os.RemoveAll(dir)
	in := filepath.Join(dir, "l4drop.c")
	out := filepath.Join(dir, "l4drop.o")
	if err := os.WriteFile(in, []byte(src), 0o600); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	cmd := exec.Command(path, "-O2", "-g", "-target", "bpf", "-mcpu=v3",
		"-Wall", "-Wno-unused-function", "-Wno-unused-label", "-c", in, "-o", out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("clang: %w\n%s", err, strings.TrimSpace(stderr.String()))
	}
	return os.ReadFile(out)
}
