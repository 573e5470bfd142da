package clang

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestCompile(t *testing.T) {
	if _, err := Binary(); err != nil {
		t.Skip(err)
	}
	obj, err := Compile(context.Background(), "int f(void) { return 1; }\n")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(obj, []byte("\x7fELF")) {
		t.Errorf("not an ELF object: % x", obj[:min(len(obj), 8)])
	}
	_, err = Compile(context.Background(), "int f(void) { return undeclared; }\n")
	if err == nil || !strings.Contains(err.Error(), "undeclared") {
		t.Errorf("error %v does not carry clang's message", err)
	}
}

// TestCompileKernelHeaders builds what every XDP program includes. On a
// machine without gcc-multilib, linux/bpf.h's asm/types.h is only found
// through IncludeDir.
func TestCompileKernelHeaders(t *testing.T) {
	if _, err := Binary(); err != nil {
		t.Skip(err)
	}
	src := "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n" +
		"SEC(\"xdp\") int prog(struct xdp_md *ctx) { return XDP_PASS; }\n"
	if _, err := Compile(context.Background(), src); err != nil {
		t.Fatal(err)
	}
}
