package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/clang"
)

// ErrNoClang is returned when clang cannot be found. Build runs $CLANG, or
// clang, or the newest clang-N on $PATH.
var ErrNoClang = errors.New("clang not found (install Debian's clang, or set $CLANG)")

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
		obj, err := compileC(gen.C)
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
func compileC(src string) ([]byte, error) {
	// -mcpu=v3: 32-bit jumps and compares, shorter code.
	obj, err := clang.Compile(context.Background(), src, "-mcpu=v3", "-Wno-unused-label")
	if errors.Is(err, clang.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", ErrNoClang, err)
	}
	return obj, err
}
