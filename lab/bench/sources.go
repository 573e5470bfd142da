package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

// SourceBits sets how many distinct sources the per-source rows rotate
// through: 2^20, the per-source table's default size.
const SourceBits = 20

// SourceCost is the cost of a packet when each comes from another of
// 1<<SourceBits sources, in BPF_PROG_TEST_RUN: the generator here cannot
// send from a million addresses at a rate that shows a table's cost, and
// a test run's packet can be given a new source for every run. A small
// program in front writes the next source into the frame and tail calls
// the program under test, drop-all or L4Drop's.
type SourceCost struct {
	// Name names the row.
	Name string
	// NS holds the mean ns per packet of each round.
	NS []float64
	// Entries is how many sources the per-source table held after the
	// rounds (0 for drop-all): the proof that the sources went round.
	Entries int
	// Err is why the row was not measured.
	Err error
}

// Median is the median over the rounds of the ns per packet.
func (s SourceCost) Median() float64 { return median(s.NS) }

// MeasureSourceCost measures drop-all and the ratelimit rule set (obj, as
// MeasureActions builds it) with every packet from another of 2^20
// sources, rounds rounds of runs packets each, in turns.
func (t Tools) MeasureSourceCost(ctx context.Context, obj string, rounds, runs int, logf func(string, ...any)) ([]SourceCost, error) {
	rows := []SourceCost{{Name: "XDP drop-all (baseline)"}, {Name: "L4Drop ratelimit per source (1,048,576 sources), then drop"}}
	l, err := lab.New()
	if err != nil {
		return nil, err
	}
	defer l.Close()
	drop, err := newDropAll()
	if err != nil {
		return nil, fmt.Errorf("drop-all: %w", err)
	}
	defer drop.Close()
	if _, unload, err := t.Load(l, obj); err != nil {
		return nil, err
	} else {
		defer unload()
	}
	rl, err := l4drop.Running(l4drop.Dir("", l.ServerIf, l.Server.Name))
	if err != nil {
		return nil, fmt.Errorf("ratelimit program: %w", err)
	}
	defer rl.Close()

	ts, err := lab.ParseTemplate(ActionTraffic[0])
	if err != nil {
		return nil, err
	}
	frame := lab.Frames([]lab.Template{ts}, 1, 1)[0]
	var fronts []*ebpf.Program
	for _, p := range []*ebpf.Program{drop, rl} {
		f, closeFront, err := newSourceFront(p)
		if err != nil {
			return nil, err
		}
		defer closeFront()
		fronts = append(fronts, f)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// A first pass fills the table with every source: a flood from a
	// million addresses finds them there, or evicts them, from then on.
	for _, f := range fronts {
		if _, err := f.Run(&ebpf.RunOptions{Data: frame, Repeat: 1 << SourceBits}); err != nil {
			return nil, fmt.Errorf("source cost: test run: %w", err)
		}
	}
	for round := range rounds {
		for i, f := range fronts {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			ret, d, err := f.Benchmark(frame, runs, nil)
			if err != nil {
				return nil, fmt.Errorf("%s: test run: %w", rows[i].Name, err)
			}
			if ret != 1 {
				rows[i].Err = fmt.Errorf("returned %d, not XDP_DROP", ret)
			}
			rows[i].NS = append(rows[i].NS, float64(d)/float64(time.Nanosecond))
			logf("round %d  %-60s %6.1f ns a packet", round+1, rows[i].Name, float64(d))
		}
	}
	if rows[1].Entries, err = sourceEntries(rl); err != nil {
		return nil, err
	}
	return rows, nil
}

// sourceEntries counts the sources prog's per-source ratelimit tables
// (arrays of sets of four 16-byte ways: tag, arrival time) hold: the ways
// with an arrival time.
func sourceEntries(prog *ebpf.Program) (int, error) {
	info, err := prog.Info()
	if err != nil {
		return 0, fmt.Errorf("program info: %w", err)
	}
	ids, _ := info.MapIDs()
	n := 0
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return 0, fmt.Errorf("map %d: %w", id, err)
		}
		mi, err := m.Info()
		if err == nil && m.Type() == ebpf.Array && m.ValueSize() == 64 && strings.HasPrefix(mi.Name, "l4drop_rl_") {
			var k uint32
			var v []byte
			for it := m.Iterate(); it.Next(&k, &v); {
				for w := 0; w < 4; w++ {
					if binary.NativeEndian.Uint64(v[16*w+8:]) != 0 {
						n++
					}
				}
			}
		}
		m.Close()
	}
	return n, nil
}

// newSourceFront returns a program that writes the next of 2^SourceBits
// IPv4 sources (10.0.0.0 and up) into an Ethernet frame's header and tail
// calls next. The IP checksum goes stale: nothing on the way checks it.
// close closes the program and its maps; the program array must stay open
// while it runs (the kernel empties a program array with its last file).
func newSourceFront(next *ebpf.Program) (prog *ebpf.Program, close func(), err error) {
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("source counter: %w", err)
	}
	defer counter.Close()
	jump, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("source front's program array: %w", err)
	}
	if err := jump.Put(uint32(0), next); err != nil {
		jump.Close()
		return nil, nil, fmt.Errorf("source front's program array: %w", err)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, counter.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		asm.Add.Imm(asm.R7, 1),
		asm.And.Imm(asm.R7, 1<<SourceBits-1),
		asm.StoreMem(asm.R0, 0, asm.R7, asm.Word),
		asm.Or.Imm(asm.R7, 10<<24),
		asm.HostTo(asm.BE, asm.R7, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14+20),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.StoreMem(asm.R2, 14+12, asm.R7, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, jump.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), // XDP_PASS: the tail call failed
		asm.Return(),
	}
	// The program array takes the front only if it agrees with next on
	// BPF_F_XDP_HAS_FRAGS and the expected attach type; the kernel does
	// not say what next has: each kind is tried.
	var errs []error
	for _, kind := range []struct {
		flags  uint32
		attach ebpf.AttachType
	}{{0, ebpf.AttachNone}, {0, ebpf.AttachXDP}, {1 << 5, ebpf.AttachNone}, {1 << 5, ebpf.AttachXDP}} {
		prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "source_front", Type: ebpf.XDP, License: "GPL",
			Flags: kind.flags, AttachType: kind.attach, Instructions: insns})
		if err == nil {
			break
		}
		errs = append(errs, err)
	}
	if prog == nil {
		jump.Close()
		return nil, nil, fmt.Errorf("source front: %w", errors.Join(errs...))
	}
	return prog, func() { prog.Close(); jump.Close() }, nil
}
