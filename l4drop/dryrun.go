package l4drop

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/l4drop/l4drop/internal/xdprun"
)

// Verdict is what a rule set does with one packet.
type Verdict struct {
	Action string // drop, pass, or tx (a SYN-ACK of the syncookie action)
	Rule   uint32 // index of the matching rule, or NoRule
	Name   string // its name, or ""
	// Monitors names the monitor rules that matched on the way, in order,
	// comma-separated ("" for none): a string keeps Verdict comparable.
	Monitors string
	// Detail names the action counter the packet moved
	// (ActionCounterNames: syncookie_ok, ratelimited...), or "".
	Detail string
}

// DryRun runs a built rule set over packets with BPF_PROG_TEST_RUN,
// attached to nothing that carries traffic: single test runs, which cost
// microseconds and need no attachment (see internal/xdprun).
type DryRun struct {
	Meta    *Meta
	Enabled []bool
	runner  *xdprun.Runner
	coll    *ebpf.Collection
	prog    *ebpf.Program
	rd      *perf.Reader
	seed    uint64 // keys the sampling hash
}

// ErrPacketSize is returned by DryRun.Run for packets of a size XDP never
// handles: shorter than an Ethernet header, or longer than a multi-buffer
// packet can be.
var ErrPacketSize = xdprun.ErrPacketSize

// NewDryRun loads obj with the switches opts selects (Location, Enable,
// Disable; the interface options are ignored).
func NewDryRun(obj []byte, opts LoadOptions) (*DryRun, error) {
	_ = rlimit.RemoveMemlock()
	meta, on, spec, err := prepare(obj, opts)
	if err != nil {
		return nil, err
	}
	// The hook's body is for captures at entry, which a dry run has
	// none of: it is the first program again, and the verifier would
	// check it twice (as long again for large rule sets).
	delete(spec.Programs, ProgBody)
	// Nor does it call the hook: the quiet twin is the program that runs
	// while nobody captures, the one to time.
	if q := spec.Programs[ProgQuiet]; q != nil && len(meta.Programs) > 0 {
		spec.Programs[meta.Programs[0]] = q
		delete(spec.Programs, ProgQuiet)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, verifierError(err, meta)
	}
	d := &DryRun{Meta: meta, Enabled: on, coll: coll}
	progs, err := chainPrograms(coll, meta)
	if err != nil {
		d.Close()
		return nil, err
	}
	d.prog = progs[0]
	// Every packet sampled, with no packet bytes: the sample says which
	// rule decided.
	d.seed = newSeed()
	if err := writeConfig(coll.Maps[MapConfig], config{Threshold: SampleThreshold(1), Seed: d.seed}); err != nil {
		d.Close()
		return nil, fmt.Errorf("dry run config: %w", err)
	}
	if d.rd, err = perf.NewReader(coll.Maps[MapSamples], 1<<16); err != nil {
		d.Close()
		return nil, fmt.Errorf("dry run samples: %w", err)
	}
	if d.runner, err = xdprun.New(); err != nil {
		d.Close()
		return nil, fmt.Errorf("dry run: %w", err)
	}
	return d, nil
}

// Run runs one Ethernet frame through the rule set.
//
// A syncookie rule's decision for an ACK is the kernel's check of the cookie
// against this host's cookie secret: it passes only ACKs answering a
// SYN-ACK this host made (in a dry run or live) within about two minutes.
// Connections a server knows are invisible to a dry run.
func (d *DryRun) Run(frame []byte) (Verdict, error) {
	var before ActionCounters
	acts := d.coll.Maps[MapActions]
	if acts != nil {
		var err error
		if before, err = readActions(acts); err != nil {
			return Verdict{}, err
		}
	}
	ret, err := d.runner.Run(d.prog, &ebpf.RunOptions{Data: frame})
	if err != nil {
		return Verdict{}, err
	}
	v := Verdict{Action: ActionName(ret), Rule: NoRule}
	if acts != nil {
		after, err := readActions(acts)
		if err != nil {
			return v, err
		}
		for i := range after {
			if after[i] != before[i] && i != CountMonitored {
				v.Detail = ActionCounterNames[i]
			}
		}
	}
	// The samples were written during the run; they are in the ring now:
	// one per monitor rule that matched, then the final one.
	d.rd.SetDeadline(time.Now().Add(time.Second))
	got := false
	for {
		rec, err := d.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if !got {
				return v, errors.New("dry run: no sample for the packet")
			}
			return v, nil
		}
		if err != nil {
			return v, fmt.Errorf("dry run: %w", err)
		}
		if len(rec.RawSample) < sampleHeader {
			continue
		}
		s, err := (&SampleReader{}).decode(rec.CPU, rec.RawSample)
		if err != nil {
			return v, err
		}
		if got && v.Name != "" {
			// The sample before was a monitor rule's.
			if v.Monitors != "" {
				v.Monitors += ","
			}
			v.Monitors += v.Name
		}
		got = true
		v.Rule, v.Name = s.Rule, ""
		if int(s.Rule) < len(d.Meta.Rules) {
			v.Name = d.Meta.Rules[s.Rule].Name
		}
		// The rest, if any, is in the ring already.
		d.rd.SetDeadline(time.Now())
	}
}

// batchLen is how many runs RunBatch makes before it reads their samples:
// their records (about 40 bytes each, more with monitor rules) must fit a
// CPU's ring of 64 KiB.
const batchLen = 256

// RunBatch runs frames through the rule set, as Run does one by one, but
// reads the samples after a batch of runs: a run costs its test run alone.
// It tells a packet's samples from the next one's by the time of each run,
// so it also reports the monitor rules each packet matched, in order.
func (d *DryRun) RunBatch(frames [][]byte) ([]Verdict, [][]uint32, error) {
	out := make([]Verdict, 0, len(frames))
	var mons [][]uint32
	for len(frames) > 0 {
		n := min(len(frames), batchLen)
		vs, ms, err := d.runBatch(frames[:n])
		if err != nil {
			return out, mons, err
		}
		out, mons, frames = append(out, vs...), append(mons, ms...), frames[n:]
	}
	return out, mons, nil
}

func (d *DryRun) runBatch(frames [][]byte) ([]Verdict, [][]uint32, error) {
	// starts[k] is when run k began, on the clock of the samples' times.
	starts := make([]int64, len(frames)+1)
	vs := make([]Verdict, len(frames))
	mons := make([][]uint32, len(frames))
	for k, f := range frames {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			return nil, nil, fmt.Errorf("dry run: %w", err)
		}
		starts[k] = ts.Nano()
		ret, err := d.runner.Run(d.prog, &ebpf.RunOptions{Data: f})
		if err != nil {
			return nil, nil, fmt.Errorf("dry run: frame %d: %w", k, err)
		}
		vs[k] = Verdict{Action: ActionName(ret), Rule: NoRule}
	}
	starts[len(frames)] = math.MaxInt64
	type rec struct {
		t    int64
		rule uint32
	}
	var recs []rec
	d.rd.SetDeadline(time.Now())
	for {
		r, err := d.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("dry run: %w", err)
		}
		if r.LostSamples > 0 {
			return nil, nil, fmt.Errorf("dry run: %d samples lost", r.LostSamples)
		}
		if len(r.RawSample) < sampleHeader {
			continue
		}
		recs = append(recs, rec{int64(binary.NativeEndian.Uint64(r.RawSample)), binary.NativeEndian.Uint32(r.RawSample[8:])})
	}
	// Per CPU, the records are in order; across CPUs, by time.
	slices.SortStableFunc(recs, func(a, b rec) int { return cmp.Compare(a.t, b.t) })
	seen := make([]bool, len(frames))
	k := 0
	for _, r := range recs {
		for k < len(frames) && r.t >= starts[k+1] {
			k++
		}
		if k == len(frames) || r.t < starts[k] {
			return nil, nil, errors.New("dry run: a sample outside the runs")
		}
		// The last sample of a run is its verdict's; those before
		// are monitor rules'.
		if seen[k] {
			mons[k] = append(mons[k], vs[k].Rule)
		}
		seen[k] = true
		vs[k].Rule, vs[k].Name = r.rule, ""
		if int(r.rule) < len(d.Meta.Rules) {
			vs[k].Name = d.Meta.Rules[r.rule].Name
		}
	}
	for k := range seen {
		if !seen[k] {
			return nil, nil, fmt.Errorf("dry run: no sample for frame %d", k)
		}
	}
	return vs, mons, nil
}

// Program is the rule set's first program, as attached for the runs;
// benchmarks run it directly.
func (d *DryRun) Program() *ebpf.Program { return d.prog }

// SetSampleRate changes the sampling of later runs (one in rate, 0 off).
// Run needs every packet sampled to name the rule: it is for benchmarks
// that time the program with sampling as in production.
func (d *DryRun) SetSampleRate(rate uint32) error {
	if err := writeConfig(d.coll.Maps[MapConfig], config{Threshold: SampleThreshold(rate), Seed: d.seed}); err != nil {
		return fmt.Errorf("dry run config: %w", err)
	}
	return nil
}

// SetAutoRules puts rules in the dry run's auto rule slots, from the
// first, as l4drop run --auto deploys them, for tests and benchmarks of
// the auto rules' path.
func (d *DryRun) SetAutoRules(rules []AutoRule) error {
	auto, count := d.coll.Maps[MapAuto], d.coll.Maps[MapAutoCount]
	if auto == nil || count == nil {
		return ErrNoAuto
	}
	if len(rules) > AutoSlots {
		return fmt.Errorf("%w: %d rules, %d slots", ErrAutoRule, len(rules), AutoSlots)
	}
	for i, r := range rules {
		if err := writeAutoRule(auto, i, r); err != nil {
			return err
		}
	}
	return writeAutoCount(count, len(rules))
}

// Close detaches and unloads.
func (d *DryRun) Close() error {
	var err error
	if d.runner != nil {
		err = d.runner.Close()
	}
	if d.rd != nil {
		d.rd.Close()
	}
	if d.coll != nil {
		d.coll.Close()
	}
	return err
}
