package cbpfc

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"
)

// XDP actions.
const (
	xdpDrop = 1
	xdpPass = 2
)

// XDPProgram compiles filter into a minimal XDP program: XDP_PASS when the
// filter matches, XDP_DROP when it does not. It is the yardstick for
// instruction counts, and a quick way to try a filter.
func XDPProgram(filter []bpf.Instruction) (asm.Instructions, error) {
	insns, err := ToEBPF(filter, EBPFOpts{
		PacketStart:  asm.R2,
		PacketEnd:    asm.R3,
		Result:       asm.R0,
		Working:      [3]asm.Register{asm.R4, asm.R5, asm.R6},
		Context:      asm.R1,
		MatchLabel:   "match",
		NoMatchLabel: "nomatch",
	})
	if err != nil {
		return nil, err
	}
	match := asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("match"), asm.Return()}
	nomatch := asm.Instructions{asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("nomatch"), asm.Return()}
	first, second := nomatch, match
	// A jump to the code that follows is not needed: put the label it
	// jumps to first.
	if last := len(insns) - 1; insns[last].OpCode.JumpOp() == asm.Ja && insns[last].Symbol() == "" {
		switch insns[last].Reference() {
		case "match":
			first, second = match, nomatch
			fallthrough
		case "nomatch":
			insns = insns[:last]
		}
	}
	// Whatever no jump reaches must go: the verifier refuses dead code.
	tail := first
	for _, ins := range insns {
		if ins.Reference() == second[0].Symbol() {
			tail = append(tail, second...)
			break
		}
	}
	prog := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
	}
	prog = append(prog, insns...)
	return append(prog, tail...), nil
}

// XDPProgramC is XDPProgram through the C backend: the source of an XDP
// program in section "xdp", function name, to build with
// clang -O2 -target bpf. It includes linux/bpf.h and bpf/bpf_helpers.h.
func XDPProgramC(filter []bpf.Instruction, name string) (string, error) {
	fn := name + "_filter"
	src, err := ToC(filter, COpts{FunctionName: fn})
	if err != nil {
		return "", err
	}
	ctx := ""
	if UsesContext(filter) {
		ctx = ", ctx"
	}
	var b strings.Builder
	b.WriteString(src)
	fmt.Fprintf(&b, `
__attribute__((section("xdp"), used)) int %s(struct xdp_md *ctx)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *data_end = (const uint8_t *)(long)ctx->data_end;
	return %s(data, data_end%s) ? XDP_PASS : XDP_DROP;
}
`, name, fn, ctx)
	return b.String(), nil
}

// CPrelude is what a C file needs before the functions ToC and
// XDPProgramC return, when nothing else in it declares those types.
const CPrelude = `typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
`
