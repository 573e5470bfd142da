package cbpfc

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"
)

func TestBadInput(t *testing.T) {
	ret := bpf.RetConstant{Val: 1}
	long := make([]bpf.Instruction, MaxInstructions+1)
	for i := range long {
		long[i] = ret
	}
	tests := []struct {
		name   string
		filter []bpf.Instruction
		err    error
		index  int
		text   string
	}{
		{"empty", nil, ErrEmpty, -1, "empty filter"},
		{"too long", long, ErrTooLong, MaxInstructions, "4097 instructions"},
		{"jump past the end", []bpf.Instruction{bpf.JumpIf{Cond: bpf.JumpEqual, SkipTrue: 3}, ret}, ErrInvalid, 0, "past the end"},
		{"ja past the end", []bpf.Instruction{ret, bpf.Jump{Skip: 1}, ret}, ErrInvalid, 1, "outside the program"},
		{"ja before the start", []bpf.Instruction{ret, bpf.RawInstruction{Op: 0x05, K: 0xfffffff0}, ret}, ErrInvalid, 1, "outside the program"},
		{"unsupported extension", []bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtProto}, bpf.RetA{}}, ErrUnsupported, 0, "extension proto"},
		{"vlan extension", []bpf.Instruction{ret, bpf.LoadExtension{Num: bpf.ExtVLANTag}, bpf.RetA{}}, ErrUnsupported, 1, "vlan_tci"},
		{"negative offset (SKF_NET_OFF)", []bpf.Instruction{bpf.LoadAbsolute{Off: 0xfff00000, Size: 1}, bpf.RetA{}}, ErrUnsupported, 0, "negative offset"},
		{"negative offset (SKF_LL_OFF)", []bpf.Instruction{bpf.LoadAbsolute{Off: 0xffe00000, Size: 2}, bpf.RetA{}}, ErrUnsupported, 0, "negative offset"},
		{"negative indirect offset", []bpf.Instruction{bpf.LoadIndirect{Off: 0xfffffffc, Size: 1}, bpf.RetA{}}, ErrUnsupported, 0, "negative offset"},
		{"negative msh offset", []bpf.Instruction{bpf.LoadMemShift{Off: 0x80000000}, bpf.RetA{}}, ErrUnsupported, 0, "negative offset"},
		{"no return at the end", []bpf.Instruction{bpf.LoadConstant{Val: 1}}, ErrInvalid, 0, "must return"},
		{"scratch out of range", []bpf.Instruction{bpf.RawInstruction{Op: 0x02, K: 16}, ret}, ErrInvalid, 0, "M[16]"},
		{"unknown opcode", []bpf.Instruction{ret, bpf.RawInstruction{Op: 0xff}, ret}, ErrInvalid, 1, "unknown opcode"},
		{"ret X", []bpf.Instruction{bpf.RawInstruction{Op: 0x0e}}, ErrInvalid, 0, "unknown return opcode"},
		// The kernel's classic BPF checker refuses these three.
		{"div #0", []bpf.Instruction{bpf.LoadConstant{Val: 10}, bpf.ALUOpConstant{Op: bpf.ALUOpDiv, Val: 0}, ret}, ErrInvalid, 1, "div #0"},
		{"mod #0", []bpf.Instruction{bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: 0}, ret}, ErrInvalid, 0, "mod #0"},
		{"lsh #32", []bpf.Instruction{bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 32}, ret}, ErrInvalid, 0, "shift by constant 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errE := ToEBPF(tt.filter, testOpts)
			_, errC := ToC(tt.filter, COpts{})
			for _, err := range []error{errE, errC} {
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("error %v is not an *Error", err)
				}
				if !errors.Is(err, tt.err) {
					t.Errorf("error %v is not %v", err, tt.err)
				}
				if e.Index != tt.index {
					t.Errorf("error %v names instruction %d, want %d", err, e.Index, tt.index)
				}
				if !strings.Contains(err.Error(), tt.text) {
					t.Errorf("error %q lacks %q", err, tt.text)
				}
			}
		})
	}
}

func TestBadOptions(t *testing.T) {
	ip := []bpf.Instruction{bpf.LoadAbsolute{Off: 12, Size: 2}, bpf.RetA{}}
	ifidx := []bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtInterfaceIndex}, bpf.RetA{}}
	with := func(f func(*EBPFOpts)) EBPFOpts {
		o := testOpts
		f(&o)
		return o
	}
	tests := []struct {
		name   string
		filter []bpf.Instruction
		opts   EBPFOpts
		text   string
	}{
		{"same register twice", ip, with(func(o *EBPFOpts) { o.Working[1] = o.PacketStart }), "both"},
		{"frame pointer", ip, with(func(o *EBPFOpts) { o.Result = asm.RFP }), "not a general-purpose register"},
		{"no result label", ip, with(func(o *EBPFOpts) { o.ResultLabel = "" }), "ResultLabel"},
		{"half the match labels", ip, with(func(o *EBPFOpts) { o.MatchLabel = "m" }), "go together"},
		{"stack too deep", ip, with(func(o *EBPFOpts) { o.StackOffset = 400 }), "512-byte stack"},
		{"no context for ifidx", ifidx, with(func(o *EBPFOpts) { o.Context = asm.R0 }), "instruction 0: invalid options: extension ifidx needs the XDP context"},
		{"helper without R0", []bpf.Instruction{bpf.LoadConstant{Val: 1}, bpf.LoadExtension{Num: bpf.ExtRand}, bpf.RetA{}},
			with(func(o *EBPFOpts) { o.Result = asm.R7 }), "instruction 1: invalid options: extension rand calls a helper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ToEBPF(tt.filter, tt.opts)
			if !errors.Is(err, ErrOptions) || !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %v, want ErrOptions with %q", err, tt.text)
			}
		})
	}
	if _, err := ToC(ip, COpts{FunctionName: "not a name"}); !errors.Is(err, ErrOptions) {
		t.Errorf("bad C name: error %v, want ErrOptions", err)
	}
}

func TestUses(t *testing.T) {
	tests := []struct {
		ext              bpf.Extension
		context, helpers bool
	}{
		{bpf.ExtLen, false, false},
		{bpf.ExtInterfaceIndex, true, false},
		{bpf.ExtType, true, false},
		{bpf.ExtCPUID, false, true},
		{bpf.ExtRand, false, true},
	}
	for _, tt := range tests {
		f := []bpf.Instruction{bpf.LoadExtension{Num: tt.ext}, bpf.RetA{}}
		if UsesContext(f) != tt.context || UsesHelpers(f) != tt.helpers {
			t.Errorf("extension %d: UsesContext %v UsesHelpers %v, want %v %v", tt.ext, UsesContext(f), UsesHelpers(f), tt.context, tt.helpers)
		}
	}
}
