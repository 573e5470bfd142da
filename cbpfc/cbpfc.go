package cbpfc

import (
	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/cbpfinsn"
)

// MaxInstructions is the longest filter accepted, in cBPF instructions, as
// in the kernel (BPF_MAXINSNS).
const MaxInstructions = cbpfinsn.MaxInstructions

// MaxBackwardJumps bounds loops: a filter that takes more backward jumps than
// this ends with 0 (no match). libpcap's protochain takes one per IPv6
// extension header or IPv4 AH header it skips, so "protochain" sees at most
// this many of them. The bound is not what keeps the verifier's work small:
// each back edge passes a may_goto, at which the verifier stops walking
// iterations once their state repeats (about 500 processed instructions for
// the largest protochain filter, 1,800 without the may_goto).
const MaxBackwardJumps = 8

// StackSize is the number of bytes of stack below EBPFOpts.StackOffset (rounded up
// to a multiple of 8) that compiled filters may use: scratch memory M[],
// the loop counter, registers saved around helper calls, and packet
// pointers kept for X = M[k].
const StackSize = 128

// EBPFOpts says how a compiled filter fits into the caller's eBPF program.
//
// The filter reads PacketStart, PacketEnd and Context and never changes
// them; it writes Result and the Working registers, and the stack below
// StackOffset. It ends by jumping to ResultLabel with its result in Result
// (non-zero: match), or to MatchLabel or NoMatchLabel; every path does.
// Labels the filter defines all start with LabelPrefix.
//
// A filter that uses the cpu or rand extension calls a BPF helper, which
// clobbers R0 to R5. Around each call the filter saves PacketStart,
// PacketEnd, Context and its own X register, where they lie in R0 to R5, on
// the stack below StackOffset, and restores them after: the registers named
// here keep their meaning, and Result and Working are the filter's anyway.
// Such a filter needs R0 named in EBPFOpts (as Result, say), since the
// helper returns its value there; ToEBPF refuses it otherwise. Other
// registers in R1 to R5 lose their values in such filters, and the verifier
// refuses a program that reads them after, so a mistake fails at load time
// rather than silently. Keep what must survive the filter in R6 to R9, or
// check [UsesHelpers].
type EBPFOpts struct {
	// PacketStart holds a packet pointer to the first byte the filter
	// sees (offset 0 of its loads): xdp_md->data, or data plus the IP
	// header offset for filters on IP packets.
	PacketStart asm.Register
	// PacketEnd holds xdp_md->data_end.
	PacketEnd asm.Register
	// Checked is the number of bytes from PacketStart that the caller has
	// already checked lie within the packet, in a way the verifier knows
	// (PacketStart+Checked compared with PacketEnd). Loads within them
	// need no check of their own. 0 is always safe.
	Checked int
	// Result receives the filter's result. The filter also keeps its
	// accumulator A there.
	Result asm.Register
	// Working are scratch registers the filter may overwrite: Working[0]
	// holds X, Working[1] checks packet bounds, Working[2] points into the
	// packet for ld [x+k]. A filter touches only those it needs (no X, no
	// Working[0]; no ld [x+k], no Working[2]; nor when X serves nothing but
	// ld [x+k], whose pointer Working[0] then holds); since the x86 JIT saves
	// R6 to R9 on entry when a program uses them, give rarely used roles
	// those registers and the common ones R0 to R5.
	Working [3]asm.Register
	// Context holds the xdp_md pointer, for the ifidx and type extensions.
	// R0 (the zero value) means the caller has none: filters using those
	// extensions are then refused with ErrOptions.
	Context asm.Register
	// ResultLabel is the symbol the filter jumps to when done.
	ResultLabel string
	// MatchLabel and NoMatchLabel, when both set, replace ResultLabel for
	// callers that only want to know whether the filter matched: the
	// filter jumps to MatchLabel for a non-zero result and to NoMatchLabel
	// for 0, and Result is then just a scratch register. This saves the
	// instructions that set and test the result.
	MatchLabel, NoMatchLabel string
	// StackOffset is the number of bytes at the top of the stack (below
	// R10) that the caller uses for itself; the filter uses at most
	// StackSize bytes below it, rounded up to a multiple of 8.
	StackOffset int
	// LabelPrefix is put before every label the filter defines, so that
	// several filters can live in one program.
	LabelPrefix string
}

// ToEBPF compiles a cBPF filter to eBPF instructions that fit into a larger
// program as opts says. Errors are [*Error]s naming the cBPF instruction.
func ToEBPF(filter []bpf.Instruction, opts EBPFOpts) (asm.Instructions, error) {
	prog, err := parse(filter)
	if err != nil {
		return nil, err
	}
	return compileEBPF(prog, opts)
}

// COpts says how a filter compiled to C is named.
type COpts struct {
	// FunctionName is the name of the C function; "filter" if empty.
	FunctionName string
	// Params makes the constants of conditional jumps (jeq, jgt, jge,
	// jset with a constant) parameters of the function, so that filters
	// alike but for those constants share one function: instruction index
	// -> parameter name (a C identifier). Jumps naming the same parameter
	// share it. The parameters follow data_end (and ctx), in name order,
	// each of type ParamType. Such a jump is compiled as it is for any
	// constant: never folded, its operand never byte-swapped.
	Params map[int]string
	// ParamType is the C type of the parameters; "uint32_t" if empty.
	ParamType string
	// ParamTest, when set, names a C function or macro called as
	// ParamTest(param, A) in place of each equality test (jeq) and each
	// bound (jge, jgt) of a parameter; its result is the test's. With a
	// pointer ParamType it lets a caller watch the values A is compared
	// with.
	ParamTest string
}

// ToC compiles a cBPF filter to a C function
//
//	static __always_inline uint32_t NAME(const uint8_t *const data, const uint8_t *const data_end)
//
// returning the filter's result (non-zero: match). data is the first byte
// the filter sees, data_end the end of the packet. When the filter uses the
// ifidx or type extension ([UsesContext]), the function takes a third
// parameter, "const struct xdp_md *const ctx".
//
// The code needs no header beyond what an XDP program has anyway: the types
// uint8_t, uint16_t, uint32_t and uint64_t, __always_inline, struct xdp_md
// (linux/bpf.h) when it takes ctx, and the helper declarations
// bpf_get_smp_processor_id and bpf_get_prandom_u32 (bpf/bpf_helpers.h) when
// the filter uses cpu or rand ([UsesHelpers]). Built with clang -O2 -target
// bpf it passes the verifier. Errors are [*Error]s naming the cBPF
// instruction.
func ToC(filter []bpf.Instruction, opts COpts) (string, error) {
	prog, err := parseParams(filter, opts)
	if err != nil {
		return "", err
	}
	return compileC(prog, opts)
}

// UsesContext reports whether the filter uses an extension that needs the
// XDP context (ifidx, type): ToC then adds a ctx parameter and ToEBPF needs
// EBPFOpts.Context.
func UsesContext(filter []bpf.Instruction) bool {
	prog, err := parse(filter)
	return err == nil && prog.usesContext
}

// UsesHelpers reports whether the filter calls BPF helpers (the cpu and rand
// extensions), which clobber R0 to R5.
func UsesHelpers(filter []bpf.Instruction) bool {
	prog, err := parse(filter)
	return err == nil && prog.usesHelpers
}
