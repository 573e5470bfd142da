package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/xdprun"
	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/xdpcap"
)

// hookName is the name the minimal program's exit refers to its hook by.
const hookName = "xdpcap_hook"

// HookedDrop returns the smallest instrumented XDP program: it drops every
// packet through xdpcap's exit sequence (a tail call into hook[XDP_DROP],
// falling back to returning XDP_DROP). With a nil hook it returns XDP_DROP
// directly, the same program without the instrumentation.
func HookedDrop(hook *ebpf.Map) (*ebpf.Program, error) {
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, int32(xdpcap.Drop)), asm.Return()}
	if hook != nil {
		insns = xdpcap.Exit(asm.R1, hookName, xdpcap.Drop)
		if err := insns.AssociateMap(hookName, hook); err != nil {
			return nil, fmt.Errorf("hooked drop program: %w", err)
		}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "l4lab_drop", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load hooked drop program: %w", err)
	}
	return prog, nil
}

// HookedEntryDrop is HookedDrop starting with xdpcap's entry sequence (a
// tail call into hook[EntrySlot], falling through while it is empty): the
// program of an XDP program that supports capture at entry.
func HookedEntryDrop(hook *ebpf.Map) (*ebpf.Program, error) {
	enter, err := xdpcap.Enter(asm.R6, hookName)
	if err != nil {
		return nil, err
	}
	insns := append(enter, xdpcap.Exit(asm.R6, hookName, xdpcap.Drop)...)
	if err := insns.AssociateMap(hookName, hook); err != nil {
		return nil, fmt.Errorf("hooked entry drop program: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "l4lab_entry_drop", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load hooked entry drop program: %w", err)
	}
	return prog, nil
}

// HookCost is what xdpcap's hook costs an XDP program, in ns per packet as
// BPF_PROG_TEST_RUN measures it. The kernel reports whole nanoseconds per
// round; each figure is a trimmed mean over the rounds (the fastest and
// slowest fifth left out), the extra costs the same of the per-round
// differences, which keeps fractions of a nanosecond.
type HookCost struct {
	// NoHook is the program without the hook, EmptyHook with the hook and
	// nothing in it, NoMatch with a capture whose filter matches nothing,
	// EmptyEntry with the hook and the entry sequence, nothing in either.
	NoHook, EmptyHook, NoMatch, EmptyEntry float64
	// EmptyExtra and NoMatchExtra are EmptyHook and NoMatch above NoHook;
	// EntryExtra is EmptyEntry above EmptyHook: what an empty entry slot
	// costs a program that supports capture at entry.
	EmptyExtra, NoMatchExtra, EntryExtra float64
	// EmptySpread and NoMatchSpread are the quartiles of the per-round
	// differences: how much the machine's other work moved them.
	EmptySpread, NoMatchSpread [2]float64
	// EntrySpread is the same of the rounds' EntryExtra.
	EntrySpread [2]float64
	// Filter is the non-matching capture's filter expression.
	Filter string
	// Rounds and PerRound say how much was run.
	Rounds, PerRound int
}

// NoMatchFilter is the capture filter of HookCost's third variant: the
// benchmark's packets never match it, so it costs its instructions only.
const NoMatchFilter = "udp port 53 and host 192.0.2.1"

// MeasureHookCost runs HookedDrop without hook, with an empty hook and with
// a capture of NoMatchFilter in the hook, and HookedEntryDrop with an
// empty hook, over a 60-byte UDP frame, rounds
// times perRound test runs each, in turns so that drift hits all three
// alike. Each variant stays attached (generic XDP on the loopback of a
// namespace of its own) for the whole run: a repeated test run of a
// program attached nowhere costs a dispatcher update, milliseconds.
func MeasureHookCost(rounds, perRound int) (res HookCost, err error) {
	res = HookCost{Filter: NoMatchFilter, Rounds: rounds, PerRound: perRound}
	tpl, err := lab.ParseTemplate("udp,port=5000")
	if err != nil {
		return res, err
	}
	filter, err := cbpf.Compile(NoMatchFilter, cbpf.LinkTypeEthernet, 0)
	if err != nil {
		return res, err
	}
	var closers []io.Closer
	defer func() {
		for _, c := range slices.Backward(closers) {
			err = errors.Join(err, c.Close())
		}
	}()
	type variant struct {
		runner *xdprun.Runner
		prog   *ebpf.Program
		ns     []float64
	}
	var vs []*variant
	for _, name := range []string{"no-hook", "empty-hook", "no-match", "empty-entry"} {
		var hook *ebpf.Map
		if name != "no-hook" {
			if hook, err = xdpcap.NewHook(); err != nil {
				return res, err
			}
			closers = append(closers, hook)
		}
		load := HookedDrop
		if name == "empty-entry" {
			load = HookedEntryDrop
		}
		prog, err := load(hook)
		if err != nil {
			return res, err
		}
		closers = append(closers, prog)
		if name == "no-match" {
			// After the program: the first program to use a hook fixes
			// what kind of programs it takes.
			c, err := xdpcap.Start([]*ebpf.Map{hook}, xdpcap.Options{Filter: filter, Actions: []xdpcap.Action{xdpcap.Drop}})
			if err != nil {
				return res, fmt.Errorf("start capture: %w", err)
			}
			closers = append(closers, c)
		}
		r, err := xdprun.New()
		if err != nil {
			return res, err
		}
		closers = append(closers, r)
		vs = append(vs, &variant{runner: r, prog: prog})
	}
	for range rounds {
		for _, v := range vs {
			d, err := v.runner.Benchmark(v.prog, tpl.Frame, perRound)
			if err != nil {
				return res, err
			}
			v.ns = append(v.ns, float64(d.Nanoseconds()))
		}
	}
	res.NoHook, res.EmptyHook, res.NoMatch = trimmedMean(vs[0].ns), trimmedMean(vs[1].ns), trimmedMean(vs[2].ns)
	res.EmptyEntry = trimmedMean(vs[3].ns)
	res.EntryExtra = trimmedMean(diff(vs[3].ns, vs[1].ns))
	res.EmptyExtra = trimmedMean(diff(vs[1].ns, vs[0].ns))
	res.NoMatchExtra = trimmedMean(diff(vs[2].ns, vs[0].ns))
	res.EmptySpread = quartiles(diff(vs[1].ns, vs[0].ns))
	res.NoMatchSpread = quartiles(diff(vs[2].ns, vs[0].ns))
	res.EntrySpread = quartiles(diff(vs[3].ns, vs[1].ns))
	return res, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// trimmedMean is the mean of v without its lowest and highest fifth.
func trimmedMean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	cut := len(s) / 5
	s = s[cut : len(s)-cut]
	var sum float64
	for _, x := range s {
		sum += x
	}
	return sum / float64(len(s))
}

// quartiles returns the lower and upper quartile of v.
func quartiles(v []float64) [2]float64 {
	if len(v) == 0 {
		return [2]float64{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	q := (len(s) - 1) / 4
	return [2]float64{s[q], s[len(s)-1-q]}
}

func diff(a, b []float64) []float64 {
	d := make([]float64, min(len(a), len(b)))
	for i := range d {
		d[i] = a[i] - b[i]
	}
	return d
}

// XDPcapMinimal is the main capture row: xdpcap, the command, capturing
// every packet HookedDrop drops on the server's veth into a file. The
// program costs next to nothing, so the rate is xdpcap's.
func (t Tools) XDPcapMinimal(dir string) Capture {
	return Capture{Name: "xdpcap on a minimal XDP program's hook (drop all), every packet", Run: func(ctx context.Context, cfg Config) (CaptureRate, error) {
		res := CaptureRate{}
		l, err := lab.New()
		if err != nil {
			return res, err
		}
		defer l.Close()
		pins, err := l.PinDir()
		if err != nil {
			return res, err
		}
		hookPath := filepath.Join(pins, hookName)
		hook, err := xdpcap.CreateHook(hookPath)
		if err != nil {
			return res, err
		}
		defer hook.Close()
		prog, err := HookedDrop(hook)
		if err != nil {
			return res, err
		}
		defer prog.Close()
		lk, err := l.AttachServer(prog)
		if err != nil {
			return res, err
		}
		defer lk.Close()
		return t.runXDPcap(ctx, cfg, l, nil, hookPath, dir)
	}}
}

// XDPcapL4Drop is the second capture row: xdpcap on the hook of L4Drop
// (obj, loaded with the 1-rule set), capturing every packet L4Drop drops.
// The rate is capped by L4Drop's own cost as much as by xdpcap's.
func (t Tools) XDPcapL4Drop(obj, dir string) Capture {
	return Capture{Name: "xdpcap on L4Drop's hook (1 rule), every dropped packet", Run: func(ctx context.Context, cfg Config) (CaptureRate, error) {
		l, err := lab.New()
		if err != nil {
			return CaptureRate{}, err
		}
		defer l.Close()
		return t.captureL4Drop(ctx, cfg, l, obj, dir, nil)
	}}
}

// XDPcapL4DropTestRuns is XDPcapL4Drop with the flood made by test runs
// of L4Drop's attached program (BPF_PROG_TEST_RUN repeating the flood's
// frame, on the flood's CPU) at TestRunRate: no veth, no stack, so there
// is no tcpdump row to compare with, but the packets come at the rate the
// generator reaches with live frames, far faster than it sends them where
// the kernel refuses it live frames.
func (t Tools) XDPcapL4DropTestRuns(obj, dir string) Capture {
	return Capture{Name: fmt.Sprintf("xdpcap on L4Drop's hook (1 rule), every dropped packet, test-run flood at %g Mpps", TestRunRate/1e6), Run: func(ctx context.Context, cfg Config) (CaptureRate, error) {
		l, err := lab.New()
		if err != nil {
			return CaptureRate{}, err
		}
		defer l.Close()
		tpl, err := lab.ParseTemplate(cfg.Traffic[0])
		if err != nil {
			return CaptureRate{}, err
		}
		send := func() (lab.Result, error) {
			prog, err := ebpf.LoadPinnedProgram(filepath.Join(t.l4dropDir(l), "prog"), nil)
			if err != nil {
				return lab.Result{}, fmt.Errorf("L4Drop's program: %w", err)
			}
			defer prog.Close()
			return testRunFlood(ctx, prog, tpl.Frame, TestRunRate, cfg.CaptureDuration, cfg.CPU)
		}
		res, err := t.captureL4Drop(ctx, cfg, l, obj, dir, send)
		res.OwnFlood = true
		return res, err
	}}
}

// l4dropDir is where l4drop pins what it loads on the lab's server.
func (t Tools) l4dropDir(l *lab.Lab) string {
	return filepath.Join("/sys/fs/bpf/l4drop", l.ServerIf+"@"+l.Server.Name)
}

// captureL4Drop loads obj on l's server, captures its drops with xdpcap
// during send's flood (nil: the generator's) and reads the flood's rule's
// counter, for the check from outside xdpcap: every packet the rule
// dropped must be in the file.
func (t Tools) captureL4Drop(ctx context.Context, cfg Config, l *lab.Lab, obj, dir string, send func() (lab.Result, error)) (CaptureRate, error) {
	_, unload, err := t.Load(l, obj)
	if err != nil {
		return CaptureRate{}, err
	}
	defer unload()
	res, err := t.runXDPcap(ctx, cfg, l, send, filepath.Join(t.l4dropDir(l), "xdpcap_hook"), dir)
	if err != nil {
		return res, err
	}
	if res.Counted, err = t.RuleCount(l, "attack"); err != nil {
		return res, err
	}
	return res, nil
}

// TestRunRate is the rate of the test-run flood, the issue's: what the
// generator reaches with live frames on one CPU. Unpaced, test runs of
// L4Drop's program reach several times that, more than one reader CPU
// takes, which says nothing about a capture on real traffic.
const TestRunRate = 2e6

// testRunFlood runs prog over frame with BPF_PROG_TEST_RUN, repeated in
// batches, on CPU cpu for d, at rate packets a second at most. The
// program must be attached somewhere: a test run of a program attached
// nowhere costs milliseconds.
func testRunFlood(ctx context.Context, prog *ebpf.Program, frame []byte, rate float64, d time.Duration, cpu int) (lab.Result, error) {
	// A batch takes about a millisecond unpaced: bursts the ring buffer
	// holds many times over.
	const batch = 1 << 13
	var res lab.Result
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: a thread whose affinity changed is discarded.
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("pin to CPU %d: %w", cpu, err)
			return
		}
		var ru0, ru1 unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru0)
		start := time.Now()
		for time.Since(start) < d && ctx.Err() == nil {
			if _, _, err := prog.Benchmark(frame, batch, nil); err != nil {
				errc <- fmt.Errorf("test run: %w", err)
				return
			}
			res.Sent += batch
			// Behind the rate: on at once; ahead: wait until due.
			if due := start.Add(time.Duration(float64(res.Sent) / rate * float64(time.Second))); time.Until(due) > 0 {
				time.Sleep(time.Until(due))
			}
		}
		res.Elapsed = time.Since(start)
		if unix.Getrusage(unix.RUSAGE_THREAD, &ru1) == nil {
			res.OnCPU = time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
		}
		errc <- nil
	}()
	return res, <-errc
}

// RuleCount returns the packets L4Drop's rule name counted on the lab's
// server interface, from `l4drop status --json`.
func (t Tools) RuleCount(l *lab.Lab, name string) (uint64, error) {
	out, err := exec.Command(t.L4Drop, "status", "--iface", l.ServerIf, "--netns", l.Server.Name, "--json").Output()
	if err != nil {
		return 0, fmt.Errorf("l4drop status: %w", err)
	}
	var st struct {
		Rules []struct {
			Name    string `json:"name"`
			Packets uint64 `json:"packets"`
		} `json:"rules"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, fmt.Errorf("l4drop status --json: %w", err)
	}
	for _, r := range st.Rules {
		if r.Name == name {
			return r.Packets, nil
		}
	}
	return 0, fmt.Errorf("l4drop status: no rule %q", name)
}

// runXDPcap captures drops from hook with the xdpcap command into a file
// during a flood of l and reads its summary.
func (t Tools) runXDPcap(ctx context.Context, cfg Config, l *lab.Lab, send func() (lab.Result, error), hook, dir string) (CaptureRate, error) {
	var res CaptureRate
	out := filepath.Join(dir, "xdpcap-"+l.ID+".pcap")
	defer os.Remove(out)
	h, err := xdpcap.OpenHook(hook)
	if err != nil {
		return res, err
	}
	defer h.Close()
	var stderr lab.Output
	c := exec.Command(t.XDPcap, "-q", "-actions", "drop", hook, out)
	c.Stderr = &stderr
	// xdpcap captures once its filter is in the hook's XDP_DROP slot.
	ready := func() bool {
		var id uint32
		return h.Lookup(uint32(xdpcap.Drop), &id) == nil && id != 0
	}
	err = captureDuring(ctx, cfg, l, send, c, &stderr, ready, &res, func(s []byte) error {
		m := xdpcapSummary.FindSubmatch(s)
		if m == nil {
			return fmt.Errorf("xdpcap printed no summary: %s", s)
		}
		res.Captured = parseUint(m[1])
		res.Seen = parseUint(m[2])
		res.Lost = parseUint(m[4])
		return nil
	})
	if err != nil {
		return res, err
	}
	if res.Records, err = pcapRecords(out); err != nil {
		return res, fmt.Errorf("xdpcap: %w", err)
	}
	if res.Records != res.Captured {
		return res, fmt.Errorf("xdpcap: %s holds %d packets, xdpcap said it captured %d: %w", out, res.Records, res.Captured, errShortFile)
	}
	return res, nil
}

// pcapRecords counts the packets of a pcap file, reading only their
// headers.
func pcapRecords(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var hdr [24]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, fmt.Errorf("%s: pcap header: %w", path, err)
	}
	var order binary.ByteOrder
	switch binary.LittleEndian.Uint32(hdr[:]) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		order = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		order = binary.BigEndian
	default:
		return 0, fmt.Errorf("%s: not a pcap file", path)
	}
	var n uint64
	for {
		if _, err := io.ReadFull(r, hdr[:16]); errors.Is(err, io.EOF) {
			return n, nil
		} else if err != nil {
			return n, fmt.Errorf("%s: record %d: %w", path, n+1, err)
		}
		capLen := int(order.Uint32(hdr[8:]))
		if _, err := r.Discard(capLen); err != nil {
			return n, fmt.Errorf("%s: record %d: %w", path, n+1, err)
		}
		n++
	}
}

// errShortFile is returned when a capture file holds fewer packets than
// its command said it captured.
var errShortFile = errors.New("capture file short")

// checkFile checks that a pcap file written by a capture holds n packets.
// A pcap record header is 16 bytes and every frame of the flood at least
// 60, so a file below n*76 bytes lost packets on the way to disk.
func checkFile(path string, n uint64) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if uint64(st.Size()) < 24+n*76 {
		return fmt.Errorf("%s: %d bytes for %d packets: %w", path, st.Size(), n, errShortFile)
	}
	return nil
}
