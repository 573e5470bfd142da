package cbpfc

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// raw parses "N,op jt jf k,..." (tcpdump -ddd) for hand-written cases.
func raw(tb testing.TB, s string) []bpf.Instruction {
	tb.Helper()
	parts := strings.Split(strings.TrimSpace(s), ",")
	var out []bpf.Instruction
	for _, p := range parts[1:] {
		f := strings.Fields(p)
		if len(f) != 4 {
			tb.Fatalf("bad instruction %q", p)
		}
		var v [4]uint64
		for i := range f {
			n, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				tb.Fatal(err)
			}
			v[i] = n
		}
		out = append(out, bpf.RawInstruction{Op: uint16(v[0]), Jt: uint8(v[1]), Jf: uint8(v[2]), K: uint32(v[3])})
	}
	return out
}

type handCase struct {
	name   string
	filter []bpf.Instruction
}

func handCases(tb testing.TB) []handCase {
	return []handCase{
		{"ret k", []bpf.Instruction{bpf.RetConstant{Val: 7}}},
		{"ret A zero", []bpf.Instruction{bpf.RetA{}}},
		{"ip", raw(tb, "4,40 0 0 12,21 0 1 2048,6 0 0 262144,6 0 0 0")},
		{"ldh gt", []bpf.Instruction{
			bpf.LoadAbsolute{Off: 12, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: 0x7ff, SkipTrue: 0, SkipFalse: 1},
			bpf.RetA{},
			bpf.RetConstant{Val: 1},
		}},
		{"ld word ret A", []bpf.Instruction{bpf.LoadAbsolute{Off: 2, Size: 4}, bpf.RetA{}}},
		{"ld word jset", []bpf.Instruction{
			bpf.LoadAbsolute{Off: 2, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x80000001, SkipTrue: 1},
			bpf.RetConstant{Val: 0},
			bpf.RetConstant{Val: 9},
		}},
		{"len", []bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtLen}, bpf.RetA{}}},
		{"ldx len", []bpf.Instruction{bpf.RawInstruction{Op: 0x81}, bpf.TXA{}, bpf.RetA{}}},
		{"tcp port 80", raw(tb, "20,40 0 0 12,21 0 6 34525,48 0 0 20,21 0 15 6,40 0 0 54,21 12 0 80,40 0 0 56,21 10 11 80,21 0 10 2048,48 0 0 23,21 0 8 6,40 0 0 20,69 6 0 8191,177 0 0 14,72 0 0 14,21 2 0 80,72 0 0 16,21 0 1 80,6 0 0 262144,6 0 0 0")},
		{"protochain", raw(tb, "24,40 0 0 12,21 0 21 2048,48 0 0 23,177 0 0 14,21 15 0 6,21 14 0 59,4 0 0 0,21 0 12 51,135 0 0 0,80 0 0 14,2 0 0 0,135 0 0 0,4 0 0 1,7 0 0 0,80 0 0 14,4 0 0 2,36 0 0 4,7 0 0 0,96 0 0 0,5 0 0 4294967280,4 0 0 0,21 0 1 6,6 0 0 262144,6 0 0 0")},
		{"div X zero", []bpf.Instruction{bpf.LoadConstant{Dst: bpf.RegA, Val: 10}, bpf.ALUOpX{Op: bpf.ALUOpDiv}, bpf.RetConstant{Val: 5}}},
		{"alu mix", []bpf.Instruction{
			bpf.LoadAbsolute{Off: 0, Size: 4},
			bpf.ALUOpConstant{Op: bpf.ALUOpMul, Val: 2654435761},
			bpf.ALUOpConstant{Op: bpf.ALUOpXor, Val: 0xdeadbeef},
			bpf.TAX{},
			bpf.LoadAbsolute{Off: 4, Size: 2},
			bpf.ALUOpConstant{Op: bpf.ALUOpOr, Val: 1},
			bpf.StoreScratch{Src: bpf.RegA, N: 3},
			bpf.TXA{},
			bpf.LoadScratch{Dst: bpf.RegX, N: 3},
			bpf.ALUOpX{Op: bpf.ALUOpMod},
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 3},
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 1},
			bpf.NegateA{},
			bpf.ALUOpConstant{Op: bpf.ALUOpSub, Val: 5},
			bpf.RetA{},
		}},
		{"scratch unset", []bpf.Instruction{bpf.LoadScratch{Dst: bpf.RegA, N: 15}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 3}, bpf.RetA{}}},
		{"ind big k", []bpf.Instruction{bpf.LoadConstant{Dst: bpf.RegX, Val: 3}, bpf.LoadIndirect{Off: 40000, Size: 1}, bpf.RetA{}}},
		{"abs far", []bpf.Instruction{bpf.LoadAbsolute{Off: 70000, Size: 1}, bpf.RetConstant{Val: 1}}},
		{"abs mid", []bpf.Instruction{bpf.LoadAbsolute{Off: 40000, Size: 2}, bpf.RetA{}}},
		{"ind from A", []bpf.Instruction{bpf.LoadAbsolute{Off: 14, Size: 1}, bpf.TAX{}, bpf.LoadIndirect{Off: 1, Size: 2}, bpf.RetA{}}},
		{"ifidx", []bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtInterfaceIndex}, bpf.RetA{}}},
		{"type", []bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtType}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 10}, bpf.RetA{}}},
		{"cpu", []bpf.Instruction{bpf.LoadAbsolute{Off: 14, Size: 1}, bpf.TAX{}, bpf.LoadExtension{Num: bpf.ExtCPUID}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1}, bpf.TXA{}, bpf.RetA{}}},
		{"rand", []bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtRand}, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 4}, bpf.RetA{}}},
		{"self loop", []bpf.Instruction{bpf.LoadConstant{Dst: bpf.RegA, Val: 1}, bpf.RawInstruction{Op: 0x05, K: 0xffffffff}, bpf.RetA{}}},
		// ldx M[k] is left out where X holds M[k] already: not after a
		// load of M[k] that was itself left out as dead, nor after st M[k].
		{"ldx M twice", []bpf.Instruction{
			bpf.LoadAbsolute{Off: 14, Size: 1},
			bpf.StoreScratch{Src: bpf.RegA, N: 2},
			bpf.LoadScratch{Dst: bpf.RegX, N: 2},
			bpf.LoadScratch{Dst: bpf.RegX, N: 2},
			bpf.LoadIndirect{Off: 3, Size: 1},
			bpf.RetA{},
		}},
		{"stx then ldx", []bpf.Instruction{
			bpf.LoadAbsolute{Off: 14, Size: 1},
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 15},
			bpf.TAX{},
			bpf.StoreScratch{Src: bpf.RegX, N: 1},
			bpf.LoadIndirect{Off: 20, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 7, SkipTrue: 2},
			bpf.LoadConstant{Dst: bpf.RegA, Val: 9},
			bpf.StoreScratch{Src: bpf.RegA, N: 1},
			bpf.LoadScratch{Dst: bpf.RegX, N: 1},
			bpf.LoadIndirect{Off: 24, Size: 1},
			bpf.RetA{},
		}},
	}
}

func testPackets() [][]byte {
	var pkts [][]byte
	base := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, // eth
		0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // ipv4 tcp
		0x04, 0xd2, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x20, 0, 0, 0, 0, 0,
	}
	pkts = append(pkts, base)
	for _, n := range []int{14, 15, 20, 24, 35, 36, 50} {
		pkts = append(pkts, append([]byte(nil), base[:n]...))
	}
	uni := append([]byte(nil), base...)
	uni[0] = 0x02
	pkts = append(pkts, uni)
	multi := append([]byte(nil), base...)
	multi[0] = 0x01
	pkts = append(pkts, multi)
	v6 := make([]byte, 14+40+8+20)
	copy(v6, base[:12])
	v6[12], v6[13] = 0x86, 0xdd
	v6[14] = 0x60
	v6[14+6] = 0 // hop-by-hop
	v6[14+40] = 6
	v6[14+41] = 0
	big := make([]byte, 3000)
	copy(big, base)
	for i := 60; i < len(big); i++ {
		big[i] = byte(i * 7)
	}
	pkts = append(pkts, v6, big)
	return pkts
}

func TestHandWritten(t *testing.T) {
	fixture.RequireRoot(t)
	r := fixture.NewXDPRunner(t)
	cases := handCases(t)
	var filters [][]bpf.Instruction
	for _, c := range cases {
		filters = append(filters, c.filter)
	}
	spec, err := cPrograms(t, filters)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep, err := loadEBPF(t, c.filter)
			if err != nil {
				t.Fatal(err)
			}
			defer ep.Close()
			cp, err := ebpf.NewProgram(spec.Programs[fmt.Sprintf("f%d", i)])
			if err != nil {
				src, _ := ToC(c.filter, COpts{})
				t.Fatalf("C: %v\n%s", err, src)
			}
			defer cp.Close()
			for j, pkt := range testPackets() {
				deterministic := !UsesHelpers(c.filter)
				want := interpret(c.filter, pkt, extValues{ifindex: 1})
				for _, b := range []struct {
					name string
					prog *ebpf.Program
				}{{"ebpf", ep}, {"c", cp}} {
					got, err := runValue(r, b.prog, pkt)
					if err != nil {
						t.Fatal(err)
					}
					if deterministic && got != want {
						t.Errorf("%s packet %d (%d bytes): got %#x, want %#x", b.name, j, len(pkt), got, want)
					}
				}
			}
		})
	}
}
