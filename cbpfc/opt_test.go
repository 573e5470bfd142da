package cbpfc

import (
	"testing"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestRewrites checks the rewrites that make the code shorter, each on a
// filter written for it: the minimal XDP program has the shape the
// rewrite gives, and the filter, embedded as the kernel tests embed it,
// returns what the interpreter returns on packets that probe each edge of
// the values and lengths it tests.
func TestRewrites(t *testing.T) {
	fixture.RequireRoot(t)
	r := fixture.NewXDPRunner(t)
	ret := func(v uint32) bpf.Instruction { return bpf.RetConstant{Val: v} }
	jump := func(c bpf.JumpTest, k uint32, jt, jf uint8) bpf.Instruction {
		return bpf.JumpIf{Cond: c, Val: k, SkipTrue: jt, SkipFalse: jf}
	}
	count := func(prog asm.Instructions, match func(asm.Instruction) bool) int {
		n := 0
		for _, ins := range prog {
			if match(ins) {
				n++
			}
		}
		return n
	}
	isJump := func(op asm.JumpOp) func(asm.Instruction) bool {
		return func(ins asm.Instruction) bool {
			return ins.OpCode.Class().IsJump() && ins.OpCode.JumpOp() == op
		}
	}
	isALU := func(op asm.ALUOp) func(asm.Instruction) bool {
		return func(ins asm.Instruction) bool {
			return ins.OpCode.Class().IsALU() && ins.OpCode.ALUOp() == op
		}
	}
	// Packets whose first two bytes, as a big-endian number, are each of
	// values, in a 64-byte packet whose other bytes count up.
	halfwords := func(values ...uint16) [][]byte {
		var out [][]byte
		for _, v := range values {
			p := make([]byte, 64)
			for i := range p {
				p[i] = byte(i)
			}
			p[0], p[1] = byte(v>>8), byte(v)
			out = append(out, p)
		}
		return out
	}
	// Packets of every length from 14 to n, each byte b at offset i
	// set to i*mul+add.
	lengths := func(n int, mul, add byte) [][]byte {
		var out [][]byte
		for l := minRunLen; l <= n; l++ {
			p := make([]byte, l)
			for i := range p {
				p[i] = byte(i)*mul + add
			}
			out = append(out, p)
		}
		return out
	}
	// Stack stores or loads of a size.
	stackOp := func(class asm.Class, size asm.Size) func(asm.Instruction) bool {
		return func(ins asm.Instruction) bool {
			return ins.OpCode.Class() == class && ins.OpCode.Size() == size && (ins.Src == asm.RFP || ins.Dst == asm.RFP)
		}
	}
	// Packets with X = [14] from 0 to 31 and [x + 20] = 7 (or 7 - X), at
	// every length round the loads' ends.
	var mPackets [][]byte
	for _, x := range []int{0, 1, 3, 9, 31} {
		for _, v := range []int{7, 7 - x} {
			for l := minRunLen + 1; l <= x+26; l++ {
				p := make([]byte, l)
				for i := range p {
					p[i] = byte(i)
				}
				p[14] = byte(x)
				if x+20 < l {
					p[x+20] = byte(v)
				}
				mPackets = append(mPackets, p)
			}
		}
	}
	// Packets of every length from 14 to n whose bytes at the offsets
	// in set are as set and the others count up, then packets of n
	// bytes with each byte in turn changed in its lowest or highest bit.
	probe := func(n int, set map[int]byte) [][]byte {
		base := make([]byte, n)
		for i := range base {
			base[i] = byte(i)
		}
		for i, b := range set {
			base[i] = b
		}
		var out [][]byte
		for l := minRunLen; l <= n; l++ {
			out = append(out, base[:l])
		}
		for i := range base {
			for _, bit := range []byte{0x01, 0x80} {
				p := append([]byte(nil), base...)
				p[i] ^= bit
				out = append(out, p)
			}
		}
		return out
	}
	// Packet loads of a size: not from the stack, nor xdp_md->data and
	// data_end from the context in R1.
	loads := func(size asm.Size) func(asm.Instruction) bool {
		return func(ins asm.Instruction) bool {
			ctx := ins.Src == asm.R1 && size == asm.Word && (ins.Offset == 0 || ins.Offset == 4)
			return ins.OpCode.Class() == asm.LdXClass && ins.OpCode.Size() == size && !ctx && ins.Src != asm.RFP
		}
	}
	isSwap := func(ins asm.Instruction) bool { return ins.OpCode.Class().IsALU() && ins.OpCode.ALUOp() == asm.Swap }
	for _, c := range []struct {
		name   string
		filter []bpf.Instruction
		pkts   [][]byte
		shape  func(asm.Instructions) bool // what the rewrite leaves
	}{
		{
			name: "port range: one subtraction, one comparison",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 0, Size: 2},
				jump(bpf.JumpGreaterOrEqual, 25, 0, 1),
				jump(bpf.JumpGreaterThan, 53, 0, 1),
				ret(0),
				ret(7),
			},
			pkts: halfwords(0, 24, 25, 26, 52, 53, 54, 0xffff),
			shape: func(p asm.Instructions) bool {
				return count(p, isALU(asm.Sub)) == 1 && count(p, isJump(asm.JGT))+count(p, isJump(asm.JLE)) == 2 // the guard and the test
			},
		},
		{
			name: "range of one port: one equality test on the unswapped load",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 0, Size: 2},
				jump(bpf.JumpGreaterOrEqual, 25, 0, 2),
				jump(bpf.JumpGreaterThan, 25, 1, 0),
				ret(7),
				ret(0),
			},
			pkts: halfwords(0, 24, 25, 26, 0x1900, 0xffff),
			shape: func(p asm.Instructions) bool {
				swaps := count(p, func(ins asm.Instruction) bool { return ins.OpCode.Class().IsALU() && ins.OpCode.ALUOp() == asm.Swap })
				return swaps == 0 && count(p, isJump(asm.JEq))+count(p, isJump(asm.JNE)) == 1
			},
		},
		{
			name: "bits a byte cannot have: no test, the load's bounds check stays",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 30, Size: 1},
				jump(bpf.JumpBitsSet, 0xffffff00, 0, 1),
				ret(0),
				ret(3),
			},
			pkts: lengths(40, 1, 0),
			shape: func(p asm.Instructions) bool {
				return count(p, isJump(asm.JSet)) == 0 && count(p, isJump(asm.JGT)) == 1
			},
		},
		{
			name: "a test whose ways differ by what nothing reads: no test, no load, the bounds check stays",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 20, Size: 2},
				jump(bpf.JumpEqual, 0x6558, 0, 2),
				bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 12},
				bpf.TAX{},
				ret(3),
			},
			pkts: lengths(30, 1, 0),
			shape: func(p asm.Instructions) bool {
				loads := count(p, func(ins asm.Instruction) bool { return ins.OpCode.Class().IsLoad() && ins.OpCode.Size() == asm.Half })
				return loads == 0 && count(p, isJump(asm.JEq))+count(p, isJump(asm.JNE)) == 0 && count(p, isJump(asm.JGT)) == 1
			},
		},
		{
			name: "X = M[k] loaded twice: the ld [x+k] pointer comes back from the stack",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 14, Size: 1},
				bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x1f},
				bpf.StoreScratch{Src: bpf.RegA, N: 3},
				bpf.LoadScratch{Dst: bpf.RegX, N: 3},
				bpf.LoadIndirect{Off: 20, Size: 1},
				jump(bpf.JumpEqual, 7, 0, 6),
				bpf.LoadAbsolute{Off: 15, Size: 1},
				bpf.TAX{},
				bpf.LoadScratch{Dst: bpf.RegX, N: 3},
				bpf.LoadIndirect{Off: 21, Size: 2},
				bpf.ALUOpX{Op: bpf.ALUOpAdd}, // X as a number: not xptr
				bpf.RetA{},
				ret(5),
			},
			pkts: mPackets,
			shape: func(p asm.Instructions) bool {
				return count(p, stackOp(asm.StXClass, asm.DWord)) == 1 && count(p, stackOp(asm.LdXClass, asm.DWord)) == 1
			},
		},
		{
			name: "X = M[k] loaded again only for a load: no code for it, the pointer comes from the stack",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 14, Size: 1},
				bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x1f},
				bpf.StoreScratch{Src: bpf.RegA, N: 3},
				bpf.LoadScratch{Dst: bpf.RegX, N: 3},
				bpf.LoadIndirect{Off: 20, Size: 1},
				bpf.ALUOpX{Op: bpf.ALUOpAdd}, // X as a number: not xptr
				jump(bpf.JumpEqual, 7, 0, 5),
				bpf.LoadAbsolute{Off: 15, Size: 1},
				bpf.TAX{},
				bpf.LoadScratch{Dst: bpf.RegX, N: 3},
				bpf.LoadIndirect{Off: 21, Size: 2},
				bpf.RetA{},
				ret(5),
			},
			pkts: mPackets,
			shape: func(p asm.Instructions) bool {
				return count(p, stackOp(asm.StXClass, asm.DWord)) == 1 && count(p, stackOp(asm.LdXClass, asm.DWord)) == 1 &&
					count(p, stackOp(asm.LdXClass, asm.Word)) == 1
			},
		},
		{
			name: "and #m, jeq #0, A read on neither way: one jset",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 20, Size: 1},
				bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xc0},
				jump(bpf.JumpEqual, 0, 0, 1),
				ret(3),
				ret(0),
			},
			pkts: append(lengths(24, 1, 0), lengths(24, 0x40, 0x3f)...),
			shape: func(p asm.Instructions) bool {
				return count(p, isJump(asm.JSet)) == 1 && count(p, isALU(asm.And)) == 0
			},
		},
		{
			name: "every way ends with 0: ret #0",
			filter: []bpf.Instruction{
				bpf.LoadExtension{Num: bpf.ExtType},
				jump(bpf.JumpEqual, 4, 0, 1),
				ret(1),
				ret(0),
			},
			pkts: lengths(20, 255, 255),
			shape: func(p asm.Instructions) bool {
				return len(p) == 2 // r0 = XDP_DROP; exit
			},
		},
		{
			name: "masked reload of the version byte goes",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 0, Size: 1},
				bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0},
				jump(bpf.JumpEqual, 0x60, 0, 1),
				ret(6),
				bpf.LoadAbsolute{Off: 0, Size: 1},
				bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0},
				jump(bpf.JumpEqual, 0x40, 0, 1),
				ret(4),
				ret(0),
			},
			pkts: append(halfwords(0x4500, 0x6000, 0x4f00, 0x5000), lengths(16, 16, 0)...),
			shape: func(p asm.Instructions) bool {
				return count(p, isALU(asm.And)) == 1
			},
		},
		{
			// libpcap's protochain steps X by "txa; add #1; tax" between
			// two loads through X.
			name: "X += 1 keeps the pointer of ld [x+k]",
			filter: []bpf.Instruction{
				bpf.LoadMemShift{Off: 0},
				bpf.LoadIndirect{Off: 0, Size: 1},
				bpf.StoreScratch{Src: bpf.RegA, N: 0},
				bpf.TXA{},
				bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1},
				bpf.TAX{},
				bpf.LoadIndirect{Off: 0, Size: 1},
				bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1},
				bpf.LoadScratch{Dst: bpf.RegX, N: 0},
				bpf.ALUOpX{Op: bpf.ALUOpAdd},
				bpf.RetA{},
			},
			pkts: append(lengths(30, 1, 0x41), lengths(30, 3, 0x45)...),
			shape: func(p asm.Instructions) bool {
				// No check of X's bound: X is at most 60, then 61.
				return count(p, func(ins asm.Instruction) bool {
					return ins.OpCode.Class().IsJump() && ins.OpCode.JumpOp() == asm.JGT && ins.OpCode.Source() == asm.ImmSource
				}) == 0
			},
		},
		{
			// The way that checks more bytes rejoins the other: it goes
			// to the end, the other falls through to the join.
			name: "block that checks more bytes moves to the end",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 2, Size: 1},
				jump(bpf.JumpEqual, 2, 0, 2),
				bpf.LoadAbsolute{Off: 20, Size: 2},
				jump(bpf.JumpEqual, 0x1415, 3, 0),
				bpf.LoadAbsolute{Off: 3, Size: 1},
				jump(bpf.JumpEqual, 3, 1, 0),
				ret(0),
				ret(9),
			},
			pkts: append(lengths(24, 1, 0), lengths(24, 0, 2)...),
			shape: func(p asm.Instructions) bool {
				// The 2-byte load (the block) comes after the last 1-byte one.
				last := map[asm.Size]int{}
				for i, ins := range p {
					if ins.OpCode.Class() == asm.LdXClass {
						last[ins.OpCode.Size()] = i
					}
				}
				return last[asm.Half] > last[asm.Byte]
			},
		},
		{
			name: "two 4-byte tests for zero: one 8-byte load and comparison",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 22, Size: 4},
				jump(bpf.JumpEqual, 0, 0, 3),
				bpf.LoadAbsolute{Off: 26, Size: 4},
				jump(bpf.JumpEqual, 0, 0, 1),
				ret(7),
				ret(0),
			},
			pkts: probe(34, map[int]byte{22: 0, 23: 0, 24: 0, 25: 0, 26: 0, 27: 0, 28: 0, 29: 0}),
			shape: func(p asm.Instructions) bool {
				return count(p, loads(asm.DWord)) == 1 && count(p, loads(asm.Word)) == 0 && count(p, isJump(asm.JNE))+count(p, isJump(asm.JEq)) == 1
			},
		},
		{
			name: "two 4-byte tests whose bytes fit an immediate big-endian: one 8-byte load, swapped",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 30, Size: 4},
				jump(bpf.JumpEqual, 0, 0, 3),
				bpf.LoadAbsolute{Off: 34, Size: 4},
				jump(bpf.JumpEqual, 1, 0, 1),
				ret(7),
				ret(0),
			},
			pkts: probe(40, map[int]byte{30: 0, 31: 0, 32: 0, 33: 0, 34: 0, 35: 0, 36: 0, 37: 1}),
			shape: func(p asm.Instructions) bool {
				return count(p, loads(asm.DWord)) == 1 && count(p, loads(asm.Word)) == 0 && count(p, isSwap) == 1
			},
		},
		{
			name: "IPv4 protocol, then fragment offset: one 4-byte load, masked",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 23, Size: 1},
				jump(bpf.JumpEqual, 6, 0, 3),
				bpf.LoadAbsolute{Off: 20, Size: 2},
				jump(bpf.JumpBitsSet, 0x1fff, 1, 0),
				ret(7),
				ret(0),
			},
			pkts: probe(30, map[int]byte{20: 0x40, 21: 0, 23: 6}),
			shape: func(p asm.Instructions) bool {
				return count(p, loads(asm.Word)) == 1 && count(p, loads(asm.Byte))+count(p, loads(asm.Half)) == 0 && count(p, isALU(asm.And)) == 1
			},
		},
		{
			name: "a mask of whole bytes: a narrower load, no mask",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 26, Size: 4},
				bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xffff0000},
				jump(bpf.JumpEqual, 0xc0a80000, 0, 1),
				ret(7),
				ret(0),
			},
			pkts: probe(34, map[int]byte{26: 0xc0, 27: 0xa8}),
			shape: func(p asm.Instructions) bool {
				return count(p, loads(asm.Half)) == 1 && count(p, loads(asm.Word)) == 0 && count(p, isALU(asm.And)) == 0
			},
		},
		{
			// The first test's bounds check covers 24 bytes, which every
			// way loads; the second test's bytes lie past them.
			name: "a test whose bytes lie past those checked stays apart",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 20, Size: 4},
				jump(bpf.JumpEqual, 0x14151617, 0, 3),
				bpf.LoadAbsolute{Off: 24, Size: 4},
				jump(bpf.JumpEqual, 0x18191a1b, 0, 1),
				ret(0),
				ret(7),
			},
			pkts: probe(32, nil),
			shape: func(p asm.Instructions) bool {
				return count(p, loads(asm.Word)) == 2 && count(p, isJump(asm.JGT)) == 2
			},
		},
		{
			// libpcap's "port 53" for IPv6, then IPv4.
			name: "the same test at a fixed offset and through X: one copy",
			filter: []bpf.Instruction{
				bpf.LoadAbsolute{Off: 12, Size: 2},
				jump(bpf.JumpEqual, 0x86dd, 0, 2),
				bpf.LoadAbsolute{Off: 54, Size: 2},
				jump(bpf.JumpEqual, 53, 4, 5),
				jump(bpf.JumpEqual, 0x800, 0, 4),
				bpf.LoadMemShift{Off: 14},
				bpf.LoadIndirect{Off: 14, Size: 2},
				jump(bpf.JumpEqual, 53, 0, 1),
				ret(7),
				ret(0),
			},
			pkts: append(probe(58, map[int]byte{12: 0x86, 13: 0xdd, 54: 0, 55: 53}), probe(38, map[int]byte{12: 8, 13: 0, 14: 0x45, 34: 0, 35: 53})...),
			shape: func(p asm.Instructions) bool {
				// The ethertype and one port; the first bounds check
				// covers the IPv4 way's 15 bytes, since the IPv6 way
				// loads 56 through X = 40, and X's check is the other.
				return count(p, loads(asm.Half)) == 2 && count(p, isJump(asm.JGT)) == 2
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			xdp, err := XDPProgram(c.filter)
			if err != nil {
				t.Fatal(err)
			}
			if !c.shape(xdp) {
				t.Errorf("not the shape the rewrite gives:\n%v", xdp)
			}
			prog, err := loadEBPF(t, c.filter)
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			for _, pkt := range c.pkts {
				want := interpret(c.filter, pkt, extValues{ifindex: 1})
				got, err := runValue(r, prog, pkt)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("%d bytes %x: got %#x, want %#x", len(pkt), pkt, got, want)
				}
			}
		})
	}
}
