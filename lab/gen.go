package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/internal/netns"
	"github.com/l4drop/l4drop/internal/splitmix"
)

// Generator sends templated traffic out of one interface as fast as the
// kernel allows, with BPF_PROG_TEST_RUN in live-frames mode: the kernel runs
// an XDP program over a frame many times, and every run's bpf_redirect puts a
// real frame on the interface. The program writes each frame whole, then its
// random fields and checksums, and counts what it sent.
type Generator struct {
	ns        *netns.NS
	ifname    string
	templates []Template
	seed      uint64

	prog       *ebpf.Program
	state, cur *ebpf.Map
	anchor     link.Link
	anchorIf   string
	soft       atomic.Bool // live frames refused: frames go out of a packet socket
}

// PacketSocket reports whether the kernel refused live frames and the
// generator sends from a packet socket instead: slower, and through the
// sender's stack, whose backlog can drop frames under load.
func (g *Generator) PacketSocket() bool { return g.soft.Load() }

// genState is the value of the generator's per-template state map.
type genState struct {
	Sent, Limit, Seed uint64
}

// DefaultBatchSize is the live-frames batch size: how many frames the kernel
// prepares and flushes at once.
const DefaultBatchSize = 256

var anchorCounter atomic.Uint32

// NewGenerator prepares to send templates out of ifname in ns (nil: the
// calling process's namespace). Packet
// contents follow from seed alone. A veth pair, down, is created in ns to keep
// the program attached while the generator lives (a repeated test run of a
// program attached nowhere re-patches the kernel's XDP dispatcher, ~20 ms a
// call);
// Close removes it.
func NewGenerator(ns *netns.NS, ifname string, templates []Template, seed uint64) (g *Generator, err error) {
	if len(templates) == 0 {
		return nil, errors.New("generator: no templates")
	}
	g = &Generator{ns: ns, ifname: ifname, templates: templates, seed: seed}
	defer func() {
		if err != nil {
			g.Close()
			g = nil
		}
	}()
	var ifindex int
	err = inNS(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		return nil
	})
	if err != nil {
		return g, fmt.Errorf("generator: %w", err)
	}
	g.cur, err = ebpf.NewMap(&ebpf.MapSpec{Name: "l4lab_cur", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return g, fmt.Errorf("generator: map: %w", err)
	}
	g.state, err = ebpf.NewMap(&ebpf.MapSpec{Name: "l4lab_state", Type: ebpf.Array, KeySize: 4, ValueSize: 24, MaxEntries: uint32(len(templates))})
	if err != nil {
		return g, fmt.Errorf("generator: map: %w", err)
	}
	insns, err := genProgram(templates, ifindex, g.cur.FD(), g.state.FD())
	if err != nil {
		return g, err
	}
	g.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "l4lab_gen", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		return g, fmt.Errorf("generator: load program: %w", err)
	}
	name := fmt.Sprintf("l4g%d-%d", os.Getpid()%100000, anchorCounter.Add(1)%1000)
	g.anchorIf = name
	if err := ipIn(ns, "link", "add", name, "type", "veth", "peer", "name", name+"p"); err != nil {
		g.anchorIf = ""
		return g, fmt.Errorf("generator: %w", err)
	}
	err = inNS(ns, func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		g.anchor, err = link.AttachXDP(link.XDPOptions{Program: g.prog, Interface: ifi.Index, Flags: link.XDPGenericMode})
		return err
	})
	if err != nil {
		return g, fmt.Errorf("generator: attach to %s: %w", name, err)
	}
	return g, nil
}

// Close releases the program and removes the anchor interfaces.
func (g *Generator) Close() error {
	var errs []error
	if g.anchor != nil {
		errs = append(errs, g.anchor.Close())
		g.anchor = nil
	}
	if g.anchorIf != "" {
		errs = append(errs, ipIn(g.ns, "link", "del", g.anchorIf))
		g.anchorIf = ""
	}
	for _, c := range []interface{ Close() error }{g.prog, g.state, g.cur} {
		if c != nil && !isNilCloser(c) {
			errs = append(errs, c.Close())
		}
	}
	g.prog, g.state, g.cur = nil, nil, nil
	return errors.Join(errs...)
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *ebpf.Program:
		return v == nil
	case *ebpf.Map:
		return v == nil
	}
	return false
}

// RunOptions tell Run how much to send and how fast.
type RunOptions struct {
	// Count is the number of packets to send, shared among the templates by
	// weight; 0 sends until Duration passes or the context ends.
	Count uint64
	// Duration bounds the run; 0 means no bound.
	Duration time.Duration
	// Rate is the target in packets per second; 0 is full speed.
	Rate float64
	// BatchSize is the live-frames batch size; 0 means DefaultBatchSize.
	BatchSize uint32
	// CPU, if not 0, pins the sending thread to CPU-1.
	CPU int
	// Progress, if set, is called about once a second during the run.
	Progress func(Result)
}

// Result tells what a run sent.
type Result struct {
	// Sent counts the frames handed to the interface.
	Sent uint64
	// PerTemplate counts them per template, in the generator's order.
	PerTemplate []uint64
	Elapsed     time.Duration
	// PPS is the rate since the previous progress report (or the whole run's,
	// in the final result).
	PPS float64
	// OnCPU is how long the sending thread ran during the run, and
	// Waited how long it was ready to run while other tasks had its CPU
	// (the scheduler's accounting; 0 where the kernel keeps none). The
	// receiving veth's NAPI, run in the sender's context, counts as
	// running: OnCPU is what the flood cost, whatever else shared the CPU.
	OnCPU, Waited time.Duration
}

// schedStat reads the calling thread's time on CPU and time waiting for one
// (/proc/thread-self/schedstat).
func schedStat() (onCPU, waited time.Duration, ok bool) {
	buf, err := os.ReadFile("/proc/thread-self/schedstat")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(buf))
	if len(f) < 2 {
		return 0, 0, false
	}
	run, err1 := strconv.ParseInt(f[0], 10, 64)
	wait, err2 := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(run), time.Duration(wait), err1 == nil && err2 == nil
}

// Run sends traffic until opts.Count packets are sent, opts.Duration passes
// or ctx ends, and returns what was sent. The counts are exact: the program
// counts each frame it redirects and refuses to go past the limit.
func (g *Generator) Run(ctx context.Context, opts RunOptions) (Result, error) {
	n := len(g.templates)
	res := Result{PerTemplate: make([]uint64, n)}
	targets := make([]uint64, n)
	var wsum uint64
	for _, t := range g.templates {
		wsum += uint64(t.Weight)
	}
	if opts.Count > 0 {
		targets = shares(opts.Count, g.templates)
	} else {
		for i := range targets {
			targets[i] = math.MaxUint64
		}
	}
	for i := range g.templates {
		s := genState{Limit: targets[i], Seed: splitmix.Mix(g.seed + uint64(i)*0x9e3779b97f4a7c15)}
		if err := g.state.Update(uint32(i), s, ebpf.UpdateAny); err != nil {
			return res, fmt.Errorf("generator: %w", err)
		}
	}
	batch := opts.BatchSize
	if batch == 0 {
		batch = DefaultBatchSize
	}
	// A round sends every template its share; at full speed a round is a few
	// milliseconds, short enough to mix templates finely and to stop soon. At
	// a set rate a round is a millisecond's worth: short bursts are what a
	// slow receiver (a packet socket, the stack) can take without the veth's
	// 256-frame ring overflowing.
	round := uint64(65536)
	if opts.Rate > 0 {
		round = max(uint64(opts.Rate/1000), uint64(n))
	}
	quanta := make([]uint64, n)
	for i, t := range g.templates {
		quanta[i] = max(1, round*uint64(t.Weight)/wsum)
	}
	var runErr error
	err := inNS(g.ns, func() error {
		if opts.CPU > 0 {
			// The kernel runs the program, and the receiving veth's NAPI,
			// on the calling thread's CPU.
			var old, set unix.CPUSet
			if err := unix.SchedGetaffinity(0, &old); err != nil {
				return err
			}
			set.Set(opts.CPU - 1)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				return fmt.Errorf("pin to CPU %d: %w", opts.CPU-1, err)
			}
			// The thread goes back to the runtime's pool afterwards.
			defer unix.SchedSetaffinity(0, &old)
		}
		cpu0, wait0, schedOK := schedStat()
		var sw *softSender
		pace := newPacer(opts)
		start := pace.start
		for {
			if ctx.Err() != nil || (opts.Duration > 0 && time.Since(start) >= opts.Duration) {
				break
			}
			busy := false
			for i := range g.templates {
				left := targets[i] - res.PerTemplate[i]
				if left == 0 {
					continue
				}
				busy = true
				if err := g.cur.Update(uint32(0), uint32(i), ebpf.UpdateAny); err != nil {
					return err
				}
				k := min(quanta[i], left)
				var err error
				if sw == nil {
					_, err = g.prog.Run(&ebpf.RunOptions{
						Data:      g.templates[i].Frame,
						Repeat:    uint32(k),
						Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
						BatchSize: batch,
					})
					if errors.Is(err, unix.EPERM) {
						// Some kernels and sandboxes refuse live frames
						// even to root: write the frames the same
						// program makes through a packet socket instead.
						if sw, err = newSoftSender(g.ifname); err != nil {
							return err
						}
						g.soft.Store(true)
						defer sw.close()
						err = sw.send(g.prog, g.templates[i].Frame, k)
					}
				} else {
					err = sw.send(g.prog, g.templates[i].Frame, k)
				}
				if err != nil {
					return fmt.Errorf("test run (live frames) of template %q: %w", g.templates[i].Spec, err)
				}
				var s genState
				if err := g.state.Lookup(uint32(i), &s); err != nil {
					return err
				}
				res.PerTemplate[i] = min(s.Sent, s.Limit)
			}
			res.Sent = 0
			for _, c := range res.PerTemplate {
				res.Sent += c
			}
			if !busy {
				break
			}
			pace.tick(ctx, &res)
		}
		res.Elapsed = time.Since(start)
		if cpu1, wait1, ok := schedStat(); ok && schedOK {
			res.OnCPU, res.Waited = cpu1-cpu0, wait1-wait0
		}
		if s := res.Elapsed.Seconds(); s > 0 {
			res.PPS = float64(res.Sent) / s
		}
		return nil
	})
	if err != nil {
		runErr = fmt.Errorf("generator: %w", err)
	}
	return res, runErr
}

// Sent returns how many packets the generator has sent since its last Run
// began, read live from the program's counters: another goroutine may call
// it while Run runs.
func (g *Generator) Sent() (uint64, error) {
	var total uint64
	for i := range g.templates {
		var s genState
		if err := g.state.Lookup(uint32(i), &s); err != nil {
			return total, fmt.Errorf("generator: %w", err)
		}
		total += min(s.Sent, s.Limit)
	}
	return total, nil
}

// inNS runs fn on a locked OS thread in ns, or in the current namespace if
// ns is nil.
func inNS(ns *netns.NS, fn func() error) error {
	if ns != nil {
		return ns.Do(fn)
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: a thread whose affinity fn changed is discarded.
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// ipIn runs `ip ARGS` in ns, or in the current namespace if ns is nil.
func ipIn(ns *netns.NS, args ...string) error {
	if ns != nil {
		return ns.IP(args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %s", strings.Join(args, " "), bytes.TrimSpace(out))
	}
	return nil
}

// shares splits count among templates by weight; the remainder goes to the
// first templates so that the total is exact.
func shares(count uint64, ts []Template) []uint64 {
	var wsum uint64
	for _, t := range ts {
		wsum += uint64(t.Weight)
	}
	out := make([]uint64, len(ts))
	var given uint64
	for i, t := range ts {
		out[i] = count / wsum * uint64(t.Weight)
		given += out[i]
	}
	rem := count - given
	for i, t := range ts {
		// count%wsum < wsum, so the remainder fits in the weights.
		add := min(rem, (count%wsum)*uint64(t.Weight)/wsum+1)
		out[i] += add
		rem -= add
		if rem == 0 {
			break
		}
	}
	return out
}

// The per-byte generator is a 64-bit linear congruential step; its top bits
// are good enough to make names and ports look random.
const (
	lcgMul = 6364136223846793005
	lcgAdd = 1442695040888963407
)

// genProgram builds the generator's XDP program: pick the current template,
// count the packet (or drop it past the limit), rewrite the random fields,
// recompute checksums, redirect to ifindex.
func genProgram(ts []Template, ifindex, curFD, stateFD int) (asm.Instructions, error) {
	const (
		rCtx   = asm.R6
		rState = asm.R7
		rHash  = asm.R8
		rData  = asm.R9
	)
	p := asm.Instructions{
		asm.Mov.Reg(rCtx, asm.R1),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, curFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "abort"),
		asm.LoadMem(rData, asm.R0, 0, asm.Word), // template index, for now
		asm.StoreMem(asm.RFP, -8, rData, asm.Word),
		asm.LoadMapPtr(asm.R1, stateFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "abort"),
		asm.Mov.Reg(rState, asm.R0),
		asm.Mov.Imm(asm.R1, 1),
		fetchAdd(rState, asm.R1), // R1 = sequence number
		asm.LoadMem(asm.R2, rState, 8, asm.DWord),
		asm.JGE.Reg(asm.R1, asm.R2, "drop"),
		asm.LoadMem(rHash, rState, 16, asm.DWord),
		asm.Add.Reg(rHash, asm.R1),
		asm.LoadImm(asm.R2, int64(-7046029254386353131), asm.DWord), // 0x9e3779b97f4a7c15
		asm.Mul.Reg(rHash, asm.R2),
		asm.Mov.Reg(asm.R2, rHash),
		asm.RSh.Imm(asm.R2, 31),
		asm.Xor.Reg(rHash, asm.R2),
		asm.LoadImm(asm.R4, lcgMul, asm.DWord),
		asm.LoadImm(asm.R5, lcgAdd, asm.DWord),
		asm.LoadMem(asm.R1, rCtx, 0, asm.Word), // data
		asm.LoadMem(asm.R3, rCtx, 4, asm.Word), // data_end
	}
	for i := range ts {
		p = append(p, asm.JEq.Imm(rData, int32(i), fmt.Sprintf("t%d", i)))
	}
	p = append(p, asm.Ja.Label("abort"))
	for i, t := range ts {
		if len(t.Frame) < 14 || len(t.Frame) > 3000 {
			return nil, fmt.Errorf("generator: template %q: frame of %d bytes (want 14 to 3000)", t.Spec, len(t.Frame))
		}
		p = append(p,
			asm.Mov.Reg(rData, asm.R1).WithSymbol(fmt.Sprintf("t%d", i)),
			asm.Mov.Reg(asm.R2, rData),
			asm.Add.Imm(asm.R2, int32(len(t.Frame))),
			asm.JGT.Reg(asm.R2, asm.R3, "drop"),
		)
		p = append(p, storeFrame(rData, t.Frame)...)
		for _, f := range t.Fields {
			if f.Off < 0 || f.Len < 1 || f.Off+f.Len > len(t.Frame) {
				return nil, fmt.Errorf("generator: template %q: field at %d+%d outside the %d-byte frame", t.Spec, f.Off, f.Len, len(t.Frame))
			}
			for b := f.Off; b < f.Off+f.Len; b++ {
				p = append(p,
					asm.Mul.Reg(rHash, asm.R4),
					asm.Add.Reg(rHash, asm.R5),
					asm.Mov.Reg(asm.R2, rHash),
					asm.RSh.Imm(asm.R2, 33),
				)
				if f.Kind == Letters {
					p = append(p, asm.Mod.Imm(asm.R2, 26), asm.Add.Imm(asm.R2, 'a'))
				}
				p = append(p, asm.StoreMem(rData, int16(b), asm.R2, asm.Byte))
			}
		}
		for j, c := range checksumPlans(t) {
			p = append(p, asm.LoadImm(asm.R2, int64(c.konst), asm.DWord))
			for _, w := range c.words {
				size := asm.Half
				if w+1 >= c.end {
					size = asm.Byte
				}
				p = append(p, asm.LoadMem(asm.R3, rData, int16(w), size), asm.Add.Reg(asm.R2, asm.R3))
			}
			for range 3 {
				p = append(p,
					asm.Mov.Reg(asm.R3, asm.R2),
					asm.RSh.Imm(asm.R3, 16),
					asm.And.Imm(asm.R2, 0xffff),
					asm.Add.Reg(asm.R2, asm.R3),
				)
			}
			p = append(p, asm.Xor.Imm(asm.R2, 0xffff))
			if c.udp {
				skip := fmt.Sprintf("t%d_c%d", i, j)
				p = append(p,
					asm.JNE.Imm(asm.R2, 0, skip),
					asm.Mov.Imm(asm.R2, 0xffff),
					asm.StoreMem(rData, int16(c.field), asm.R2, asm.Half).WithSymbol(skip),
				)
			} else {
				p = append(p, asm.StoreMem(rData, int16(c.field), asm.R2, asm.Half))
			}
		}
		p = append(p, asm.Ja.Label("redirect"))
	}
	p = append(p,
		asm.Mov.Imm(asm.R1, int32(ifindex)).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("abort"), // XDP_ABORTED
		asm.Return(),
	)
	return p, nil
}

// storeFrame writes frame at dst, four bytes a store. Live frames come from
// a page pool whose pages the kernel fills once and then reuses as they are:
// a receiver that rewrote a frame in place (XDP_TX turns a SYN into a
// SYN-ACK in the same buffer) would have its rewrite sent again, the random
// fields aside. Writing the whole template for every packet is what makes
// the generator send what it says; it costs a store per 4 bytes.
func storeFrame(dst asm.Register, frame []byte) asm.Instructions {
	var p asm.Instructions
	i := 0
	for ; i+4 <= len(frame); i += 4 {
		v := int32(binary.NativeEndian.Uint32(frame[i:]))
		p = append(p, asm.StoreImm(dst, int16(i), int64(v), asm.Word))
	}
	if i+2 <= len(frame) {
		v := int16(binary.NativeEndian.Uint16(frame[i:]))
		p = append(p, asm.StoreImm(dst, int16(i), int64(v), asm.Half))
		i += 2
	}
	if i < len(frame) {
		p = append(p, asm.StoreImm(dst, int16(i), int64(frame[i]), asm.Byte))
	}
	return p
}

// fetchAdd is `src = atomic_fetch_add((u64 *)dst, src)`. cilium/ebpf v0.22
// encodes asm.FetchAdd without BPF_FETCH in the immediate (the kernel then
// runs a plain atomic add and src keeps its value), so the immediate is set
// here by hand.
func fetchAdd(dst, src asm.Register) asm.Instruction {
	ins := asm.FetchAdd.Mem(dst, src, asm.DWord, 0)
	ins.Constant = int64(unix.BPF_ADD | unix.BPF_FETCH)
	return ins
}

// checksumPlan recomputes one checksum in the program: konst holds the sum of
// everything fixed, words are the offsets of the 16-bit words that vary.
type checksumPlan struct {
	field int
	konst uint64
	words []int
	end   int // a word starting at end-1 is a single byte
	udp   bool
}

// checksumPlans returns the checksums that a template's random fields touch.
func checksumPlans(t Template) []checksumPlan {
	lo, ok := parseLayout(t.Frame)
	if !ok || len(t.Fields) == 0 {
		return nil
	}
	varByte := make([]bool, len(t.Frame))
	for _, f := range t.Fields {
		for b := f.Off; b < f.Off+f.Len; b++ {
			varByte[b] = true
		}
	}
	// plan sums ranges (even-aligned starts) of a copy of the frame with the
	// checksum field and the varying words zeroed.
	plan := func(field int, konst uint64, ranges [][2]int) (checksumPlan, bool) {
		c := checksumPlan{field: field, konst: konst}
		f := append([]byte(nil), t.Frame...)
		f[field], f[field+1] = 0, 0
		for _, r := range ranges {
			for w := r[0]; w < r[1]; w += 2 {
				if varByte[w] || (w+1 < r[1] && varByte[w+1]) {
					c.words = append(c.words, w)
					f[w] = 0
					if w+1 < r[1] {
						f[w+1] = 0
					}
				}
			}
		}
		for _, r := range ranges {
			c.konst += sumLE(f[r[0]:r[1]])
			c.end = r[1]
		}
		return c, len(c.words) > 0
	}
	var out []checksumPlan
	if lo.ipCsum >= 0 {
		if c, ok := plan(lo.ipCsum, 0, [][2]int{{lo.l3, lo.l4}}); ok {
			out = append(out, c)
		}
	}
	if lo.l4Csum >= 0 {
		if c, ok := plan(lo.l4Csum, lo.pseudoConst(), [][2]int{lo.addrs, {lo.l4, lo.end}}); ok {
			c.udp = lo.proto == 17
			out = append(out, c)
		}
	}
	return out
}

// pacer reports a sender's progress once a second and holds it to
// RunOptions.Rate; both senders (live frames, AF_PACKET) share it.
type pacer struct {
	opts               RunOptions
	start, lastT, base time.Time
	lastSent, baseSent uint64
}

func newPacer(opts RunOptions) *pacer {
	now := time.Now()
	return &pacer{opts: opts, start: now, lastT: now, base: now}
}

// tick is called after each batch, res.Sent counting it: it reports
// progress when a second has passed and waits until the rate allows more.
func (p *pacer) tick(ctx context.Context, res *Result) {
	now := time.Now()
	if p.opts.Progress != nil && now.Sub(p.lastT) >= time.Second {
		res.Elapsed = now.Sub(p.start)
		res.PPS = float64(res.Sent-p.lastSent) / now.Sub(p.lastT).Seconds()
		p.opts.Progress(*res)
		p.lastT, p.lastSent = now, res.Sent
	}
	if p.opts.Rate <= 0 {
		return
	}
	due := p.base.Add(time.Duration(float64(res.Sent-p.baseSent) / p.opts.Rate * float64(time.Second)))
	if time.Since(due) > 100*time.Millisecond {
		// Fell behind (the CPU was busy elsewhere): carry on at the rate
		// from now rather than send a catch-up burst.
		p.base, p.baseSent = time.Now(), res.Sent
	}
	if d := time.Until(due); d > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
}

// softSender sends what the generator's program writes without live
// frames: each frame is made by an ordinary test run of the program (which
// counts it as live frames would) and sent from a packet socket, many per
// sendmmsg. About ten times slower than live frames, the same packets.
type softSender struct {
	fd   int
	out  [][]byte
	iovs []unix.Iovec
	msgs []unix.Mmsghdr
}

func newSoftSender(ifname string) (*softSender, error) {
	fd, err := packetSocket(ifname)
	if err != nil {
		return nil, err
	}
	s := &softSender{fd: fd, iovs: make([]unix.Iovec, replayBatch), msgs: make([]unix.Mmsghdr, replayBatch)}
	for range replayBatch {
		s.out = append(s.out, make([]byte, 16384))
	}
	return s, nil
}

func (s *softSender) close() { unix.Close(s.fd) }

// send makes up to n frames from frame with prog and sends them.
func (s *softSender) send(prog *ebpf.Program, frame []byte, n uint64) error {
	for n > 0 {
		k := 0
		for ; k < replayBatch && uint64(k) < n; k++ {
			opts := &ebpf.RunOptions{Data: frame, DataOut: s.out[k][:cap(s.out[k])]}
			ret, err := prog.Run(opts)
			if err != nil {
				return err
			}
			if ret != 4 { // XDP_REDIRECT: the program sends only within its limit
				n = uint64(k)
				break
			}
			s.iovs[k].Base = &opts.DataOut[0]
			s.iovs[k].SetLen(len(opts.DataOut))
			s.msgs[k].Hdr = unix.Msghdr{Iov: &s.iovs[k], Iovlen: 1}
		}
		for sent := 0; sent < k; {
			r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[sent])), uintptr(k-sent), 0, 0, 0)
			if errno != 0 {
				if errno == unix.ENOBUFS || errno == unix.EAGAIN || errno == unix.EINTR {
					continue
				}
				return fmt.Errorf("sendmmsg: %w", errno)
			}
			sent += int(r)
		}
		n -= uint64(k)
	}
	return nil
}
