package cbpfc

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/internal/fixture"
)

// testOpts puts the filter into a program whose context is in R1, as the
// test programs and the minimal XDP program have it.
var testOpts = EBPFOpts{
	PacketStart: asm.R2,
	PacketEnd:   asm.R3,
	Result:      asm.R0,
	Working:     [3]asm.Register{asm.R4, asm.R5, asm.R6},
	Context:     asm.R1,
	ResultLabel: "result",
}

// valueProgram wraps a compiled filter into an XDP program that writes the
// filter's result into the first 4 bytes of the packet (host order) and
// returns XDP_PASS, so tests see the exact value.
func valueProgram(filter asm.Instructions) asm.Instructions {
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
	}
	insns = append(insns, filter...)
	return append(insns,
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word).WithSymbol("result"),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 4),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.StoreMem(asm.R2, 0, asm.R0, asm.Word),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("out"),
		asm.Return(),
	)
}

func loadAsm(tb testing.TB, name string, insns asm.Instructions) (*ebpf.Program, error) {
	tb.Helper()
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: insns,
	}, ebpf.ProgramOptions{LogSizeStart: 1 << 20})
	if err != nil {
		return nil, fmt.Errorf("load: %w\n%v", err, insns)
	}
	return prog, nil
}

func loadEBPF(tb testing.TB, filter []bpf.Instruction) (*ebpf.Program, error) {
	tb.Helper()
	insns, err := ToEBPF(filter, testOpts)
	if err != nil {
		return nil, err
	}
	return loadAsm(tb, "cbpfc_test", valueProgram(insns))
}

// loadMatch loads XDPProgram: XDP_PASS for a match, XDP_DROP otherwise.
func loadMatch(tb testing.TB, filter []bpf.Instruction) (*ebpf.Program, error) {
	tb.Helper()
	insns, err := XDPProgram(filter)
	if err != nil {
		return nil, err
	}
	return loadAsm(tb, "cbpfc_match", insns)
}

const cPrelude = CPrelude

// cPrograms builds one XDP program per filter in one clang run; program i
// is named "f<i>" and writes the filter's result as valueProgram does.
func cPrograms(tb testing.TB, filters [][]bpf.Instruction) (*ebpf.CollectionSpec, error) {
	tb.Helper()
	return cProgramsContext(context.Background(), filters)
}

// cProgramsContext is cPrograms with a context that ends the clang run.
func cProgramsContext(ctx context.Context, filters [][]bpf.Instruction) (*ebpf.CollectionSpec, error) {
	var b strings.Builder
	b.WriteString(cPrelude)
	for i, f := range filters {
		name := fmt.Sprintf("filter%d", i)
		src, err := ToC(f, COpts{FunctionName: name})
		if err != nil {
			return nil, fmt.Errorf("filter %d: %w", i, err)
		}
		b.WriteString(src)
		ctxArg := ""
		if UsesContext(f) {
			ctxArg = ", ctx"
		}
		fmt.Fprintf(&b, `SEC("xdp") int f%d(struct xdp_md *ctx)
{
	uint8_t *data = (uint8_t *)(long)ctx->data;
	const uint8_t *data_end = (const uint8_t *)(long)ctx->data_end;
	uint32_t r = %s(data, data_end%s);
	if (data + 4 <= data_end)
		*(uint32_t *)data = r;
	return XDP_PASS;
}
`, i, name, ctxArg)
	}
	b.WriteString("char _license[] SEC(\"license\") = \"GPL\";\n")
	obj, err := clang.Compile(ctx, b.String())
	if err != nil {
		return nil, err
	}
	return ebpf.LoadCollectionSpecFromReader(strings.NewReader(string(obj)))
}

// runValue runs prog over pkt and returns the filter's result.
func runValue(r *fixture.XDPRunner, prog *ebpf.Program, pkt []byte) (uint32, error) {
	ret, out, err := r.RunData(prog, pkt)
	if err != nil {
		return 0, err
	}
	if ret != 2 {
		return 0, fmt.Errorf("program returned %d, not XDP_PASS", ret)
	}
	return binary.NativeEndian.Uint32(out), nil
}
