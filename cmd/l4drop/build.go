//go:build !loadonly

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/l4drop/l4drop/l4drop/build"
)

func cmdBuild(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("build RULES.yaml -o rules.o [--emit-c]", stderr)
	out := fs.String("o", "", "write the ELF object here")
	emit := fs.Bool("emit-c", false, "print the generated C on stdout")
	budget := fs.Int("max-program-insns", 0, "cBPF instructions per XDP program before splitting (0: default)")
	pos, err := parse(fs, args, 1, "l4drop build rules.yaml -o rules.o")
	if err != nil {
		return err
	}
	if *out == "" && !*emit {
		return errors.New("give -o FILE, --emit-c, or both")
	}
	if *budget < 0 {
		return fmt.Errorf("--max-program-insns %d: want 0 (default) or more", *budget)
	}
	rs, err := build.LoadRuleSet(pos[0])
	if err != nil {
		return err
	}
	opts := build.BuildOptions{MaxProgramInsns: *budget}
	if *out == "" {
		gen, err := build.Generate(rs, opts)
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, gen.C)
		return err
	}
	obj, gen, err := build.Build(rs, opts)
	if err != nil {
		return err
	}
	if *emit {
		io.WriteString(stdout, gen.C)
	}
	if err := os.WriteFile(*out, obj, 0o644); err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	fmt.Fprintf(stderr, "%s: %d rules in %d program(s), %d bytes\n", *out, len(gen.Meta.Rules), len(gen.Meta.Programs), len(obj))
	return nil
}

func init() {
	cmds["build"] = cmdBuild
	cmds["test"] = cmdTest
	buildRules = func(path string) ([]byte, error) {
		rs, err := build.LoadRuleSet(path)
		if err != nil {
			return nil, err
		}
		obj, _, err := build.Build(rs, build.BuildOptions{})
		return obj, err
	}
}
