package xdpcap

import (
	"fmt"

	"github.com/cilium/ebpf/asm"
)

// Exit returns the instructions that end an XDP program generated in Go the
// way xdpcap_exit ends a C one: a tail call into hook[action], falling back
// to returning action. ctx is the register holding the xdp_md pointer
// (anything but R1 works too, it is copied); hook is the name of the hook
// map, resolved like any map reference: by name from the CollectionSpec's
// Maps, or with asm.Instructions.AssociateMap.
//
// The sequence clobbers R0 to R5. It is 7 instructions.
func Exit(ctx asm.Register, hook string, action Action) asm.Instructions {
	insns := asm.Instructions{}
	if ctx != asm.R1 {
		insns = append(insns, asm.Mov.Reg(asm.R1, ctx))
	}
	return append(insns,
		asm.LoadMapPtr(asm.R2, 0).WithReference(hook),
		asm.Mov.Imm32(asm.R3, int32(action)),
		asm.FnTailCall.Call(),
		asm.Mov.Imm32(asm.R0, int32(action)),
		asm.Return(),
	)
}

// ExitReg is Exit with the action in a register, for programs that compute
// it. action must be one of R6 to R9 (the tail call clobbers R0 to R5) and
// hold a value below 2^32; ctx must differ from R2 and R3.
func ExitReg(ctx asm.Register, hook string, action asm.Register) (asm.Instructions, error) {
	if action < asm.R6 || action > asm.R9 {
		return nil, fmt.Errorf("xdpcap: action register %s: want one of r6 to r9, which the tail call keeps", action)
	}
	if ctx == asm.R2 || ctx == asm.R3 {
		return nil, fmt.Errorf("xdpcap: context register %s is overwritten before use", ctx)
	}
	insns := asm.Instructions{}
	if ctx != asm.R1 {
		insns = append(insns, asm.Mov.Reg(asm.R1, ctx))
	}
	return append(insns,
		asm.LoadMapPtr(asm.R2, 0).WithReference(hook),
		asm.Mov.Reg32(asm.R3, action),
		asm.FnTailCall.Call(),
		asm.Mov.Reg(asm.R0, action),
		asm.Return(),
	), nil
}

// Enter returns the instructions that start an XDP program generated in Go
// the way xdpcap_entry starts a C one: a tail call into hook[EntrySlot],
// where an entry capture's filter records the packet and tail calls the
// program's body from hook[BodySlot]; while the slot is empty (nobody
// captures at entry) the call falls through, for about 2 ns. They must be
// the program's first instructions: they save R1, the context, in ctx (one
// of R6 to R9, which the tail call keeps) and restore R1 from it, so the
// body follows as if the program started there. The body, loaded as a
// program of its own without these instructions, goes in hook[BodySlot]
// (SetBody).
//
// The sequence clobbers R0 and R2 to R5. It is 6 instructions.
func Enter(ctx asm.Register, hook string) (asm.Instructions, error) {
	if ctx < asm.R6 || ctx > asm.R9 {
		return nil, fmt.Errorf("xdpcap: context register %s: want one of r6 to r9, which the tail call keeps", ctx)
	}
	return asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		asm.LoadMapPtr(asm.R2, 0).WithReference(hook),
		asm.Mov.Imm32(asm.R3, EntrySlot),
		asm.FnTailCall.Call(),
		asm.Mov.Reg(asm.R1, ctx),
	}, nil
}
