package xdpcap

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpfc"
)

// Record layout, shared by the ring buffer and the perf event array: a
// header, then the captured bytes.
//
//	offset 0  u64 timestamp, bpf_ktime_get_ns (CLOCK_MONOTONIC)
//	offset 8  u32 length of the whole packet, all fragments
//	offset 12 u32 captured length
//	offset 16 u32 CPU
//	offset 20 u16 action
//	offset 22 u16 hook (index of the hook in the capture)
//	offset 24 captured bytes
const (
	recTime    = 0
	recLen     = 8
	recCapLen  = 12
	recCPU     = 16
	recAction  = 20
	recHook    = 22
	recHdrSize = 24
)

// Counters of one (hook, action), per CPU: packets seen, matched and lost
// (matched but not written: ring buffer full, or a failed copy).
const (
	cntSeen    = 0
	cntMatched = 8
	cntLost    = 16
	cntSize    = 24
)

// BPF flags of bpf_ringbuf_query, bpf_ringbuf_submit and
// bpf_perf_event_output.
const (
	rbAvailData    = 0
	rbNoWakeup     = 1
	rbForceWakeup  = 2
	perfCurrentCPU = 0xffffffff
)

// Names of the maps in the filter programs' references.
const (
	countersMap = "xdpcap_counters"
	outputMap   = "xdpcap_output"
	hookMap     = "xdpcap_hook"
)

// Program names mark xdpcap's filters in a hook: a slot holding a program
// whose name has this prefix, while no xdpcap holds the hook's lock, is a
// leftover of a capture that was killed.
const progNamePrefix = "xdpcap_"

// progSpec describes one filter program.
type progSpec struct {
	filter []bpf.Instruction // nil: match everything
	// action is the slot the program goes in: an XDP action, or Entry
	// for the entry filter, which goes on to the program's body.
	action  Action
	hook    int // index of the hook in the capture
	snapLen int
	perf    bool
	frags   bool
	// attachXDP sets the expected attach type BPF_XDP, as ELF loaders do
	// for SEC("xdp") programs. Tail calls need it to match the caller's.
	attachXDP bool
}

// wakeupEvery is how many records a CPU writes to the ring buffer per
// wakeup of the reader, a power of two.
const wakeupEvery = 256

// maxLoad is the most bytes bpf_xdp_load_bytes copies in one call.
const maxLoad = 0xffff

// maxPerfCapture is the most packet bytes a perf record holds: a perf
// sample's size is 16 bits, headers included.
const maxPerfCapture = 65000

// ringClasses returns the record sizes the ring buffer program reserves:
// bpf_ringbuf_reserve takes a constant size, so the program picks the
// smallest class that holds the packet rather than snapLen every time.
func ringClasses(snapLen int) []int {
	var cs []int
	for _, c := range []int{64, 128, 256, 512, 1024, 1536, 2048, 4096, 9216, 16384, 32768, 65536, 131072} {
		if c >= snapLen {
			break
		}
		cs = append(cs, c)
	}
	return append(cs, snapLen)
}

// maxCapture is the most bytes of a packet the program captures.
func (p *progSpec) maxCapture() int {
	if p.perf {
		return min(p.snapLen, maxPerfCapture)
	}
	return p.snapLen
}

func (p *progSpec) name() string {
	return progNamePrefix + p.action.Name()
}

// instructions builds the filter program. Registers: R6 ctx, R7 counters
// of this hook and action, R8 packet length and then the record, R9
// captured length.
func (p *progSpec) instructions() (asm.Instructions, error) {
	const (
		labelDone   = "xdpcap_done"
		labelResult = "xdpcap_result"
		labelLost   = "xdpcap_lost"
		labelRecord = "xdpcap_record"
	)
	key := int64(p.hook*numPoints + int(p.action))
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -4, key, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(countersMap),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, labelDone),
		asm.Mov.Reg(asm.R7, asm.R0),
	}
	insns = append(insns, increment(asm.R7, cntSeen)...)

	if p.filter == nil {
		insns = append(insns, asm.Mov.Imm(asm.R0, 1))
	} else {
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
			asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		)
		f, err := cbpfc.ToEBPF(p.filter, cbpfc.EBPFOpts{
			PacketStart: asm.R2,
			PacketEnd:   asm.R3,
			Result:      asm.R0,
			Working:     [3]asm.Register{asm.R1, asm.R4, asm.R5},
			Context:     asm.R6,
			ResultLabel: labelResult,
			StackOffset: 32,
			LabelPrefix: "xdpcap_filter_",
		})
		if err != nil {
			return nil, fmt.Errorf("compile filter: %w", err)
		}
		insns = append(insns, f...)
	}

	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, labelDone).WithSymbol(labelResult),
	)
	insns = append(insns, increment(asm.R7, cntMatched)...)
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnXdpGetBuffLen.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.JLE.Imm(asm.R9, int32(p.maxCapture()), labelRecord+"_len"),
		asm.Mov.Imm(asm.R9, int32(p.maxCapture())),
		// Tells the verifier the copy is at least a byte long.
		asm.JLT.Imm(asm.R9, 1, labelDone).WithSymbol(labelRecord+"_len"),
	)

	if p.perf {
		insns = append(insns, p.perfOutput(labelDone, labelLost)...)
	} else {
		insns = append(insns, p.ringOutput(labelDone, labelLost, labelRecord)...)
	}

	insns = append(insns, increment(asm.R7, cntLost)...)
	insns[len(insns)-3] = insns[len(insns)-3].WithSymbol(labelLost)
	if p.action == Entry {
		// On to the program's body, which decides the packet's fate.
		// Should the body be gone from its slot, the packet passes, as
		// it would with no XDP program.
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.R6).WithSymbol(labelDone),
			asm.LoadMapPtr(asm.R2, 0).WithReference(hookMap),
			asm.Mov.Imm32(asm.R3, BodySlot),
			asm.FnTailCall.Call(),
			asm.Mov.Imm(asm.R0, int32(Pass)),
			asm.Return(),
		)
		return insns, nil
	}
	insns = append(insns,
		asm.Mov.Imm(asm.R0, int32(p.action)).WithSymbol(labelDone),
		asm.Return(),
	)
	return insns, nil
}

// increment adds one to the u64 at reg+off; the counters are per CPU, so
// no atomic operation is needed. 3 instructions.
func increment(reg asm.Register, off int16) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, reg, off, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(reg, off, asm.R1, asm.DWord),
	}
}

// ringOutput reserves a record of the smallest size class that holds the
// captured length (R9), fills it and submits it.
func (p *progSpec) ringOutput(done, lost, record string) asm.Instructions {
	var insns asm.Instructions
	classes := ringClasses(p.snapLen)
	for i, c := range classes {
		last := i == len(classes)-1
		var block asm.Instructions
		if !last {
			block = append(block, asm.JGT.Imm(asm.R9, int32(c), fmt.Sprintf("%s_class%d", record, i+1)))
		}
		block = append(block,
			asm.LoadMapPtr(asm.R1, 0).WithReference(outputMap),
			asm.Mov.Imm(asm.R2, int32(recHdrSize+c)),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnRingbufReserve.Call(),
		)
		if !last {
			block = append(block, asm.Ja.Label(record))
		}
		if i > 0 {
			block[0] = block[0].WithSymbol(fmt.Sprintf("%s_class%d", record, i))
		}
		insns = append(insns, block...)
	}
	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, lost).WithSymbol(record),
		asm.StoreMem(asm.R0, recLen, asm.R8, asm.Word),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.StoreMem(asm.R8, recCapLen, asm.R9, asm.Word),
		asm.StoreImm(asm.R8, recAction, int64(p.action), asm.Half),
		asm.StoreImm(asm.R8, recHook, int64(p.hook), asm.Half),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.R8, recTime, asm.R0, asm.DWord),
		asm.FnGetSmpProcessorId.Call(),
		asm.StoreMem(asm.R8, recCPU, asm.R0, asm.Word),
	)
	// bpf_xdp_load_bytes reads across fragments, so multi-buffer packets
	// are captured whole; it copies at most 0xffff bytes a call.
	insns = append(insns, asm.Mov.Reg(asm.R4, asm.R9))
	if p.snapLen > maxLoad {
		insns = append(insns,
			asm.JLE.Imm(asm.R4, maxLoad, record+"_load1"),
			asm.Mov.Imm(asm.R4, maxLoad),
		)
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol(record+"_load1"),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R8),
		asm.Add.Imm(asm.R3, recHdrSize),
		asm.FnXdpLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, record+"_discard"),
	)
	if p.snapLen > maxLoad {
		insns = append(insns,
			asm.JLE.Imm(asm.R9, maxLoad, record+"_submit"),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, maxLoad),
			asm.Mov.Reg(asm.R3, asm.R8),
			asm.Add.Imm(asm.R3, recHdrSize+maxLoad),
			asm.Mov.Reg(asm.R4, asm.R9),
			asm.Add.Imm(asm.R4, -maxLoad),
			asm.FnXdpLoadBytes.Call(),
			asm.JNE.Imm(asm.R0, 0, record+"_discard"),
		)
	}
	insns = append(insns,
		asm.Ja.Label(record+"_submit"),
		asm.Mov.Reg(asm.R1, asm.R8).WithSymbol(record+"_discard"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufDiscard.Call(),
		asm.Ja.Label(lost),
		// Wake the reader once every wakeupEvery records a CPU writes;
		// it finds the others when it polls. A wakeup per record costs
		// microseconds, and one per record while the buffer is full
		// (say, when woken above a fill level) as much.
		asm.Mov.Imm(asm.R2, rbNoWakeup).WithSymbol(record+"_submit"),
		asm.LoadMem(asm.R1, asm.R7, cntMatched, asm.DWord),
		asm.And.Imm(asm.R1, wakeupEvery-1),
		asm.JNE.Imm(asm.R1, 0, record+"_nowake"),
		asm.Mov.Imm(asm.R2, rbForceWakeup),
		asm.Mov.Reg(asm.R1, asm.R8).WithSymbol(record+"_nowake"),
		asm.FnRingbufSubmit.Call(),
		asm.Ja.Label(done),
	)
	return insns
}

// perfOutput writes the header from the stack and the packet with
// bpf_perf_event_output, which takes the number of packet bytes to append
// in the flags' upper 32 bits.
func (p *progSpec) perfOutput(done, lost string) asm.Instructions {
	const hdr = -32
	return asm.Instructions{
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.RFP, hdr+recTime, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, hdr+recLen, asm.R8, asm.Word),
		asm.StoreMem(asm.RFP, hdr+recCapLen, asm.R9, asm.Word),
		asm.FnGetSmpProcessorId.Call(),
		asm.StoreMem(asm.RFP, hdr+recCPU, asm.R0, asm.Word),
		asm.StoreImm(asm.RFP, hdr+recAction, int64(p.action), asm.Half),
		asm.StoreImm(asm.RFP, hdr+recHook, int64(p.hook), asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(outputMap),
		asm.Mov.Reg(asm.R3, asm.R9),
		asm.LSh.Imm(asm.R3, 32),
		asm.Mov.Imm32(asm.R4, -1), // BPF_F_CURRENT_CPU, zero-extended
		asm.Or.Reg(asm.R3, asm.R4),
		asm.Mov.Reg(asm.R4, asm.RFP),
		asm.Add.Imm(asm.R4, hdr),
		asm.Mov.Imm(asm.R5, recHdrSize),
		asm.FnPerfEventOutput.Call(),
		asm.JEq.Imm(asm.R0, 0, done),
	}
}

// load loads the program with its maps; hook is needed by the entry
// filter only.
func (p *progSpec) load(counters, output, hook *ebpf.Map) (*ebpf.Program, error) {
	insns, err := p.instructions()
	if err != nil {
		return nil, err
	}
	if p.action == Entry {
		if err := insns.AssociateMap(hookMap, hook); err != nil {
			return nil, err
		}
	}
	if err := insns.AssociateMap(countersMap, counters); err != nil {
		return nil, err
	}
	if err := insns.AssociateMap(outputMap, output); err != nil {
		return nil, err
	}
	spec := &ebpf.ProgramSpec{
		Name:         p.name(),
		Type:         ebpf.XDP,
		Instructions: insns,
		License:      "Dual BSD/GPL",
	}
	if p.frags {
		spec.Flags = bpfFXDPHasFrags
	}
	if p.attachXDP {
		spec.AttachType = ebpf.AttachXDP
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return nil, fmt.Errorf("load %s filter: %w", p.action, err)
	}
	return prog, nil
}

// bpfFXDPHasFrags is BPF_F_XDP_HAS_FRAGS: the program copes with
// multi-buffer packets. A program may only tail call programs that agree
// with it on this flag (and on the expected attach type).
const bpfFXDPHasFrags = 1 << 5
