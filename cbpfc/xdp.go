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
	p, err := parse(filter)
	if err != nil {
		return nil, err
	}
	helpers := p.usesHelpers
	indirect := false
	for _, in := range p.insns {
		indirect = indirect || in.kind == kLdInd
	}
	// Registers: the x86 JIT saves R6 to R9 on entry when a program uses
	// them, which costs as much as a small filter, so stay in R0 to R5
	// where possible. R0 is preset to XDP_DROP, so "no match" is just an
	// exit, unless R0 is needed: a helper call returns in it, and ld
	// [x+k] needs a register more.
	opts := EBPFOpts{
		PacketStart:  asm.R2,
		PacketEnd:    asm.R3,
		Result:       asm.R4,
		Working:      [3]asm.Register{asm.R1, asm.R5, asm.R6},
		MatchLabel:   "match",
		NoMatchLabel: "nomatch",
	}
	// When X's register can hold the pointer for ld [x+k], that needs no
	// register more either.
	presetDrop := !helpers && (!indirect || analyze(p).useXPtr(0))
	if !presetDrop {
		opts.Result, opts.Working[2] = asm.R0, asm.R6
		if !p.usesContext {
			opts.Working[2] = asm.R4
		}
	}
	if p.usesContext {
		opts.Context = asm.R1
		if presetDrop {
			opts.Working[0] = asm.R7
		} else {
			opts.Working = [3]asm.Register{asm.R4, asm.R5, asm.R6}
		}
	}
	insns, err := compileEBPF(p, opts)
	if err != nil {
		return nil, err
	}
	type block struct {
		label string
		code  asm.Instructions
	}
	match := block{"match", asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()}}
	nomatch := block{"nomatch", asm.Instructions{asm.Return()}}
	if !presetDrop {
		nomatch.code = asm.Instructions{asm.Mov.Imm(asm.R0, xdpDrop), asm.Return()}
	}
	tail := []block{match, nomatch}
	// The filter ends with a jump; when it goes to the code that follows,
	// it is not needed.
	fallsThrough := false
	insns = invertLast(insns)
	if last := len(insns) - 1; insns[last].OpCode.JumpOp() == asm.Ja && insns[last].Symbol() == "" {
		switch insns[last].Reference() {
		case "match":
			if presetDrop {
				// match: r0 = XDP_PASS, then the exit of nomatch.
				match.code = match.code[:1]
				tail = []block{match, nomatch}
			}
			insns, fallsThrough = insns[:last], true
		case "nomatch":
			tail = []block{nomatch, match}
			insns, fallsThrough = insns[:last], true
		}
	}
	if presetDrop {
		// No-match is an exit with R0 preset: a jump there is one.
		for i, ins := range insns {
			if ins.OpCode.JumpOp() == asm.Ja && ins.OpCode.Class() == asm.JumpClass && ins.Reference() == "nomatch" {
				insns[i] = asm.Return().WithSymbol(ins.Symbol())
			}
		}
	}
	refs := map[string]bool{}
	for _, ins := range insns {
		refs[ins.Reference()] = true
	}
	// Whatever nothing reaches must go: the verifier refuses dead code.
	var code asm.Instructions
	reached := fallsThrough
	for i, b := range tail {
		if i > 0 {
			prev := tail[i-1].code
			reached = reached && prev[len(prev)-1].OpCode.JumpOp() != asm.Exit
		}
		reached = reached || refs[b.label]
		if !reached {
			continue
		}
		b.code[0] = b.code[0].WithSymbol(b.label)
		code = append(code, b.code...)
	}
	// The packet pointers and the preset result only where something
	// reads them: a filter that always returns the same is then as short
	// as can be.
	uses := func(r asm.Register) bool {
		for _, ins := range insns {
			if ins.Src == r || ins.Dst == r {
				return true
			}
		}
		return false
	}
	var prog asm.Instructions
	if uses(asm.R2) {
		prog = append(prog, asm.LoadMem(asm.R2, asm.R1, 0, asm.Word))
	}
	if uses(asm.R3) {
		prog = append(prog, asm.LoadMem(asm.R3, asm.R1, 4, asm.Word))
	}
	if presetDrop && (refs["nomatch"] || fallsThrough && tail[0].label == "nomatch") {
		prog = append(prog, asm.Mov.Imm(asm.R0, xdpDrop))
	}
	prologue := len(prog)
	prog = append(prog, insns...)
	prog = append(prog, code...)
	prog = coalesce(prog, prologue)
	return dropJumpsToNext(prog), nil
}

// inverse maps a conditional jump to the one taken exactly when it is not.
var inverse = map[asm.JumpOp]asm.JumpOp{
	asm.JEq: asm.JNE, asm.JNE: asm.JEq,
	asm.JGT: asm.JLE, asm.JLE: asm.JGT,
	asm.JGE: asm.JLT, asm.JLT: asm.JGE,
	asm.JSGT: asm.JSLE, asm.JSLE: asm.JSGT,
	asm.JSGE: asm.JSLT, asm.JSLT: asm.JSGE,
}

// invertLast turns a filter ending "if cond goto match; goto nomatch" into
// "if !cond goto nomatch; goto match", so that it falls through into the
// match block, which then needs no exit of its own.
func invertLast(insns asm.Instructions) asm.Instructions {
	n := len(insns)
	if n < 2 {
		return insns
	}
	cond, ja := insns[n-2], insns[n-1]
	if ja.OpCode.JumpOp() != asm.Ja || ja.Symbol() != "" || ja.Reference() != "nomatch" ||
		!cond.OpCode.Class().IsJump() || cond.Reference() != "match" {
		return insns
	}
	inv, ok := inverse[cond.OpCode.JumpOp()]
	if !ok {
		return insns
	}
	cond.OpCode = cond.OpCode.SetJumpOp(inv)
	out := append(asm.Instructions(nil), insns[:n-2]...)
	return append(out, cond.WithReference("nomatch"), ja.WithReference("match"))
}

// coalesce loads a field of the context (data, data_end) straight into the
// register of the one copy the program makes of it, as clang would: "r5 =
// r2; r5 += 14" becomes "r5 += 14" with r5 loaded where r2 was. The
// program's first prologue instructions are those loads. Only in a
// program without backward jumps, where nothing placed after the copy runs
// before it on any path.
func coalesce(prog asm.Instructions, prologue int) asm.Instructions {
	refs := func(ins asm.Instruction, r asm.Register) bool {
		return ins.Dst == r || ins.Src == r
	}
	// Loops, and blocks the filter moved to the end that jump back, run
	// code placed later before code placed earlier.
	at := map[string]int{}
	for i, ins := range prog {
		if sym := ins.Symbol(); sym != "" {
			at[sym] = i
		}
	}
	for i, ins := range prog {
		if t, ok := at[ins.Reference()]; ok && ins.OpCode.Class().IsJump() && t <= i {
			return prog
		}
	}
	for k := 0; k < prologue; k++ {
		ld := prog[k]
		if ld.OpCode != asm.LoadMemOp(asm.Word) || ld.Src != asm.R1 {
			continue
		}
		r := ld.Dst
		m := -1
		for i := prologue; i < len(prog); i++ {
			if refs(prog[i], r) {
				if m >= 0 {
					m = -1
					break
				}
				m = i
			}
		}
		if m < 0 || prog[m].OpCode != asm.Mov.Op(asm.RegSource) || prog[m].Src != r || m+1 >= len(prog) {
			continue
		}
		d := prog[m].Dst
		if d <= asm.R3 || d == asm.RFP || prog[m].Symbol() != "" && prog[m+1].Symbol() != "" {
			continue
		}
		used := false
		for _, ins := range prog[:m] {
			used = used || refs(ins, d)
		}
		if used {
			continue
		}
		ld.Dst = d
		prog[k] = ld
		next := prog[m+1]
		if sym := prog[m].Symbol(); sym != "" {
			next = next.WithSymbol(sym)
		}
		prog = append(append(prog[:m:m], next), prog[m+2:]...)
	}
	return prog
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
