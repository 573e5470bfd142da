package fingerprint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4drop/l4drop/l4drop"
)

// Decision says what decided a sampled packet.
type Decision uint8

// Decisions of a sampled packet.
const (
	// NoRule: no rule of the file matched; what auto rules are made from.
	NoRule Decision = iota
	// FilePass: a rule of the file passed it (an allow-list): legitimate.
	FilePass
	// FileDrop: a rule of the file dropped it: handled already.
	FileDrop
	// Auto: auto rule Sample.Slot matched it.
	Auto
)

// Sample is one sampled packet for Engine.Sample.
type Sample struct {
	// Packet holds the captured bytes from the IP header on; the engine
	// copies what it keeps.
	Packet []byte
	// Len is the packet's length on the wire from the IP header on (0:
	// len(Packet)).
	Len int
	// Family is the family the link layer gives the packet, as in
	// Packet.Family (0: the IP header's version field).
	Family   uint8
	Decision Decision
	// Slot is the auto rule's slot when Decision is Auto.
	Slot int
}

// Deployer puts auto rules into a running program's table.
type Deployer interface {
	// Deploy puts r into slot, replacing what it held.
	Deploy(slot int, r l4drop.AutoRule) error
	// Remove empties slot.
	Remove(slot int) error
}

// Config configures an Engine. SampleRate and Deployer are required.
type Config struct {
	// SampleRate is the program's sampling: one packet in SampleRate.
	SampleRate uint32
	// Threshold is the rate, in packets per second, from which traffic a
	// fingerprint matches is an attack (default 10,000), if it is also
	// Ratio times its baseline rate (default 10).
	Threshold float64
	Ratio     float64
	// Ceiling is the rate from which a single vector is an attack even if
	// the baseline holds it, as it does a flood that was running when the
	// engine started (default Ratio × Threshold; below 0: never). Such a
	// vector must be told from the rest of the traffic by more than one
	// field, or it gets no rule.
	Ceiling float64
	// Expire removes a rule once what it matches has stayed below
	// Threshold that long (default 60 s).
	Expire time.Duration
	// Window is how far back a tick looks for samples (default 500 ms);
	// Tick how often Run ticks (default 100 ms).
	Window, Tick time.Duration
	// Learn is how long the engine learns the baseline before it detects
	// (default 2 s, after the quarantine). Quarantine is how long samples wait before they join
	// the baseline (default 2 s): an attack detected within it never
	// becomes part of it.
	Learn, Quarantine time.Duration
	// HalfLife is the baseline's decay: a feature value's rate counts half
	// after it (default 5 min).
	HalfLife time.Duration
	// BaselineSamples is how many recent legitimate samples a rule must
	// match none of (default 4096).
	BaselineSamples int
	// Monitor deploys rules as l4drop.AutoMonitor, not AutoDrop.
	Monitor bool
	// Slots is how many auto slots the engine uses (default
	// l4drop.AutoSlots).
	Slots    int
	Deployer Deployer
	// Logger gets every decision (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now); tests make it deterministic.
	Now func() time.Time
	// MaxPending bounds the samples held between ticks (default 65,536);
	// Sample drops and counts the ones beyond.
	MaxPending int
	// Options tune fingerprinting.
	Options Options
}

// ErrConfig is returned for unusable configurations.
var ErrConfig = errors.New("invalid auto configuration")

// Metrics are the engine's counters since it started.
type Metrics struct {
	Samples     uint64 // taken by Sample
	SamplesLost uint64 // refused by Sample: the engine fell behind
	Ticks       uint64
	Anomalies   uint64 // ticks that found traffic above the threshold and its baseline
	Deployed    uint64 // rules deployed
	Refined     uint64 // rules narrowed
	Removed     uint64 // rules removed: expired or matching the baseline
	NoRule      uint64 // anomalies no rule could describe without collateral
	Errors      uint64 // Deployer errors
	Active      int    // rules deployed now
}

// Active is an auto rule the engine has deployed.
type Active struct {
	Slot  int
	Rule  Rule
	Since time.Time
	// PPS is the rate of what it matched over the last window.
	PPS float64
}

// Engine learns the make-up of a program's traffic from its samples,
// detects attacks, and deploys, refines and expires auto rules for them.
// Sample may be called from any goroutine; Tick and Run from one.
type Engine struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	pending []Sample
	spare   []Sample

	samples, lost                                            atomic.Uint64
	ticks, anomalies, deployed, refined, removed, none, errs atomic.Uint64
	nActive                                                  atomic.Int64

	start   time.Time
	batches []batch // the window and the quarantine, oldest first
	win     map[uint64]int32
	winN    int // NoRule samples in the window
	// base holds each feature value's decayed count of baseline samples,
	// baseN all of them, in units that grow by 2 every HalfLife from
	// epoch: shares need no decay, a ratio of two counts.
	base     map[uint64]float64
	baseN    float64
	epoch    time.Time
	baseRing []pkt
	baseNext int
	slots    []*slot
	lastNone time.Time
	retry    time.Time
	// standRetry is when standing may look for a flood above the ceiling
	// again after finding none.
	standRetry time.Time

	rmu    sync.Mutex
	report []Active
}

type batch struct {
	t    time.Time
	recs []rec
	// inWin: the batch's counts are in the window.
	inWin bool
}

type rec struct {
	p     pkt
	dec   Decision
	slot  int
	feats []uint64 // value, or missing
	score float64
}

const missing = 1 << 32

// minBaseline is the fewest baseline samples detection starts with.
const minBaseline = 100

// maxAnalysed bounds the anomalous samples a tick fingerprints;
// retryAfter is how long the engine waits after an anomaly it could not
// describe, or a deployment that failed.
const (
	maxAnalysed = 2048
	retryAfter  = 500 * time.Millisecond
)

// featKey is a feature value: family, protocol, field and value.
func featKey(p *pkt, idx int, v uint64) uint64 {
	return uint64(p.h.family)<<56 | uint64(p.h.proto)<<48 | uint64(idx)<<40 | v&0xffffffff
}

type slot struct {
	rule      Rule
	since     time.Time
	lastAbove time.Time
	count     int   // samples in the window
	recent    []pkt // the latest samples it matched
	next      int
}

// NewEngine returns an engine; Tick or Run makes it work.
func NewEngine(cfg Config) (*Engine, error) {
	if cfg.SampleRate == 0 {
		return nil, fmt.Errorf("%w: sample rate 0 (sampling off)", ErrConfig)
	}
	if cfg.Deployer == nil {
		return nil, fmt.Errorf("%w: no deployer", ErrConfig)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if cfg.Threshold <= 0 {
		cfg.Threshold = 10000
	}
	if cfg.Ratio <= 0 {
		cfg.Ratio = 10
	}
	if cfg.Ceiling == 0 {
		cfg.Ceiling = cfg.Ratio * cfg.Threshold
	}
	def(&cfg.Expire, 60*time.Second)
	def(&cfg.Window, 500*time.Millisecond)
	def(&cfg.Tick, 100*time.Millisecond)
	def(&cfg.Learn, 2*time.Second)
	def(&cfg.Quarantine, 2*time.Second)
	def(&cfg.HalfLife, 5*time.Minute)
	if cfg.BaselineSamples <= 0 {
		cfg.BaselineSamples = 4096
	}
	if cfg.Slots <= 0 || cfg.Slots > l4drop.AutoSlots {
		cfg.Slots = l4drop.AutoSlots
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1 << 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Options = cfg.Options.withDefaults()
	e := &Engine{
		cfg:   cfg,
		log:   cfg.Logger,
		win:   map[uint64]int32{},
		base:  map[uint64]float64{},
		slots: make([]*slot, cfg.Slots),
		start: cfg.Now(),
	}
	return e, nil
}

// Sample hands the engine one sampled packet. It never blocks: while the
// engine is behind by MaxPending samples it drops the sample, counts it
// lost and returns false.
func (e *Engine) Sample(s Sample) bool {
	e.mu.Lock()
	if len(e.pending) >= e.cfg.MaxPending {
		e.mu.Unlock()
		e.lost.Add(1)
		return false
	}
	// Keep the bytes the fields reach: IP header, transport header and
	// the payload bytes fingerprints test.
	n := min(len(s.Packet), 60+60+payloadBytes)
	if s.Len < len(s.Packet) {
		s.Len = len(s.Packet)
	}
	s.Packet = append([]byte(nil), s.Packet[:n]...)
	e.pending = append(e.pending, s)
	e.mu.Unlock()
	e.samples.Add(1)
	return true
}

// Run ticks every Config.Tick until ctx is done.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			e.Tick()
		}
	}
}

// Metrics returns the engine's counters.
func (e *Engine) Metrics() Metrics {
	return Metrics{
		Samples: e.samples.Load(), SamplesLost: e.lost.Load(), Ticks: e.ticks.Load(),
		Anomalies: e.anomalies.Load(), Deployed: e.deployed.Load(), Refined: e.refined.Load(),
		Removed: e.removed.Load(), NoRule: e.none.Load(), Errors: e.errs.Load(),
		Active: int(e.nActive.Load()),
	}
}

// Rules returns the rules deployed as of the last tick.
func (e *Engine) Rules() []Active {
	e.rmu.Lock()
	defer e.rmu.Unlock()
	return append([]Active(nil), e.report...)
}

// Adopt makes the engine manage a rule already in slot, as a restarted
// daemon finds its rules in the table: it expires and refines it like its
// own.
func (e *Engine) Adopt(i int, r l4drop.AutoRule, since time.Time) error {
	if i < 0 || i >= len(e.slots) || e.slots[i] != nil {
		return fmt.Errorf("%w: slot %d of %d taken or missing", ErrConfig, i, len(e.slots))
	}
	if err := r.Validate(); err != nil {
		return err
	}
	e.slots[i] = &slot{rule: Rule{AutoRule: r}, since: since, lastAbove: e.cfg.Now()}
	e.nActive.Add(1)
	return nil
}

// Tick analyses the samples taken since the last tick with those of the
// window: it updates the baseline, expires and refines rules, and deploys
// new ones.
func (e *Engine) Tick() {
	now := e.cfg.Now()
	e.ticks.Add(1)
	e.mu.Lock()
	in := e.pending
	e.pending = e.spare[:0]
	e.mu.Unlock()

	b := batch{t: now, inWin: true}
	for _, s := range in {
		p, ok := newPkt(s.Packet, s.Len, s.Family)
		if !ok {
			continue
		}
		r := rec{p: p, dec: s.Decision, slot: s.Slot}
		switch s.Decision {
		case Auto:
			if s.Slot >= 0 && s.Slot < len(e.slots) && e.slots[s.Slot] != nil {
				sl := e.slots[s.Slot]
				sl.count++
				if len(sl.recent) < 512 {
					sl.recent = append(sl.recent, p)
				} else {
					sl.recent[sl.next] = p
					sl.next = (sl.next + 1) % len(sl.recent)
				}
			}
		case NoRule, FilePass:
			r.feats = e.features(&p)
			if s.Decision == NoRule {
				e.winN++
				for i, v := range r.feats {
					if v != missing {
						e.win[featKey(&p, i, v)]++
					}
				}
			}
		}
		b.recs = append(b.recs, r)
	}
	e.mu.Lock()
	e.spare = in[:0]
	e.mu.Unlock()
	e.age(now)
	e.score(b.recs)
	e.batches = append(e.batches, b)
	e.maintain(now)
	// Detection waits for a baseline: Learn's worth of samples out of
	// quarantine.
	if now.Sub(e.start) >= e.cfg.Learn+e.cfg.Quarantine && len(e.baseRing) >= minBaseline {
		e.detect(now)
	} else {
		// A flood above the ceiling needs no learning period: one
		// running when the engine started is found once the first
		// samples leave the quarantine.
		e.standing(now)
	}
	e.publish(now)
}

// features returns p's values of the scoring fields.
func (e *Engine) features(p *pkt) []uint64 {
	fs := scoreFields(p.h.family, p.h.proto)
	out := make([]uint64, len(fs))
	for i := range fs {
		if v, ok := fs[i].value(p); ok {
			out[i] = uint64(v)
		} else {
			out[i] = missing
		}
	}
	return out
}

var scoreCache sync.Map // groupKey -> []field

// scoreFields are the fields whose values the baseline learns: the
// headers' and the payload's first bytes, not those random in every
// packet (sequence numbers, addresses).
func scoreFields(fam, proto byte) []field {
	k := groupKey{fam, proto}
	if v, ok := scoreCache.Load(k); ok {
		return v.([]field)
	}
	var out []field
	for _, f := range fields(fam, proto) {
		switch {
		case f.name == "seq", f.name == "ack", f.name == "source", f.name == "source /32":
		case f.base == l4drop.BasePayload && f.off >= 16:
		case f.name == "tcp option byte" && f.off >= 28:
		default:
			out = append(out, f)
		}
	}
	scoreCache.Store(k, out)
	return out
}

// age moves batches out of the window, and out of the quarantine into
// the baseline.
func (e *Engine) age(now time.Time) {
	for i := range e.batches {
		b := &e.batches[i]
		if !b.inWin || now.Sub(b.t) < e.cfg.Window {
			continue
		}
		b.inWin = false
		for _, r := range b.recs {
			switch r.dec {
			case NoRule:
				e.winN--
				for j, v := range r.feats {
					if v != missing {
						k := featKey(&r.p, j, v)
						if e.win[k]--; e.win[k] <= 0 {
							delete(e.win, k)
						}
					}
				}
			case Auto:
				if r.slot >= 0 && r.slot < len(e.slots) && e.slots[r.slot] != nil {
					e.slots[r.slot].count--
				}
			}
		}
	}
	n := 0
	for n < len(e.batches) && now.Sub(e.batches[n].t) >= e.cfg.Quarantine && !e.batches[n].inWin {
		for _, r := range e.batches[n].recs {
			if r.dec == NoRule || r.dec == FilePass {
				e.admit(&r, e.batches[n].t)
			}
		}
		n++
	}
	e.batches = append(e.batches[:0], e.batches[n:]...)
}

// admit makes r part of the baseline unless an auto rule matches it: an
// attack detected while r waited.
func (e *Engine) admit(r *rec, t time.Time) {
	for _, sl := range e.slots {
		if sl != nil && r.p.matches(&sl.rule.AutoRule) {
			return
		}
	}
	w := e.weight(t)
	e.baseN += w
	for j, v := range r.feats {
		if v != missing {
			e.base[featKey(&r.p, j, v)] += w
		}
	}
	if len(e.baseRing) < e.cfg.BaselineSamples {
		e.baseRing = append(e.baseRing, r.p)
	} else {
		e.baseRing[e.baseNext] = r.p
		e.baseNext = (e.baseNext + 1) % len(e.baseRing)
	}
	if len(e.base) > 1<<18 {
		e.prune()
	}
}

// weight is what a sample at t adds to the baseline's counts.
func (e *Engine) weight(t time.Time) float64 {
	if e.epoch.IsZero() {
		e.epoch = t
	}
	x := float64(t.Sub(e.epoch)) / float64(e.cfg.HalfLife)
	if x > 40 {
		// Rescale before the counts lose precision.
		f := math.Exp2(-x)
		for k, c := range e.base {
			e.base[k] = c * f
		}
		e.baseN *= f
		e.epoch, x = t, 0
	}
	return math.Exp2(x)
}

// prune forgets feature values whose share has decayed to nothing.
func (e *Engine) prune() {
	for k, c := range e.base {
		if c < e.baseN*1e-6 {
			delete(e.base, k)
		}
	}
}

// pps converts a count of samples in the window to packets per second.
func (e *Engine) pps(n int, now time.Time) float64 {
	w := min(e.cfg.Window, now.Sub(e.start))
	if w <= 0 {
		w = e.cfg.Tick
	}
	return float64(n) * float64(e.cfg.SampleRate) / w.Seconds()
}

// maintain expires rules whose traffic stays below the threshold, and
// narrows (or removes) rules whose samples show baseline traffic.
func (e *Engine) maintain(now time.Time) {
	for i, sl := range e.slots {
		if sl == nil {
			continue
		}
		pps := e.pps(sl.count, now)
		if pps >= e.cfg.Threshold {
			sl.lastAbove = now
		}
		if now.Sub(sl.lastAbove) >= e.cfg.Expire {
			e.drop(i, "expired", slog.Float64("pps", pps), slog.Duration("below_threshold_for", now.Sub(sl.lastAbove)))
			continue
		}
		// A rule that matches baseline samples drops legitimate traffic:
		// as after a restart, a rule adopted from the table, or a baseline
		// that grew since.
		k := groupKey{sl.rule.Family, sl.rule.Proto}
		legit := 0
		for _, p := range e.baseRing {
			if p.matches(&sl.rule.AutoRule) {
				legit++
			}
		}
		if legit == 0 {
			continue
		}
		var rules []Rule
		err := ErrNoFingerprint
		if len(sl.recent) >= e.cfg.Options.MinSamples {
			rules, err = Fingerprint(packets(sl.recent), packets(e.baselineOf(k)), e.cfg.Options)
		}
		if err != nil {
			e.drop(i, "matches baseline traffic", slog.Int("baseline_samples_matched", legit), slog.Int("samples", len(sl.recent)))
			continue
		}
		old := sl.rule
		r := rules[0]
		r.State = e.state()
		if err := e.cfg.Deployer.Deploy(i, r.AutoRule); err != nil {
			e.errs.Add(1)
			e.log.Error("auto: refine", "slot", i, "error", err)
			continue
		}
		sl.rule, sl.recent, sl.next = r, nil, 0
		e.refined.Add(1)
		e.log.Info("auto: refine", "slot", i, "expr", r.Expr(), "was", old.Expr(),
			"baseline_samples_matched", legit, "samples", r.Samples, "coverage", r.Coverage)
	}
}

func (e *Engine) baselineOf(k groupKey) []pkt {
	var out []pkt
	for _, p := range e.baseRing {
		if p.h.family == k.fam && p.h.proto == k.proto {
			out = append(out, p)
		}
	}
	return out
}

func packets(ps []pkt) []Packet {
	out := make([]Packet, len(ps))
	for i, p := range ps {
		out[i] = Packet{Data: p.data, Len: p.wire, Family: p.h.family}
	}
	return out
}

func (e *Engine) state() l4drop.AutoState {
	if e.cfg.Monitor {
		return l4drop.AutoMonitor
	}
	return l4drop.AutoDrop
}

func (e *Engine) drop(i int, why string, attrs ...any) {
	sl := e.slots[i]
	if err := e.cfg.Deployer.Remove(i); err != nil {
		e.errs.Add(1)
		e.log.Error("auto: remove", "slot", i, "error", err)
		return
	}
	e.slots[i] = nil
	e.nActive.Add(-1)
	e.removed.Add(1)
	args := append([]any{"slot", i, "reason", why, "expr", sl.rule.Expr(), "active_for", e.cfg.Now().Sub(sl.since)}, attrs...)
	e.log.Info("auto: remove", args...)
}

// score scores new samples against the window they arrived in: how much
// likelier their values are now than in the baseline (a naive Bayes
// likelihood ratio), each value's share smoothed by 1% so rare and random
// values say little. A flash crowd's values keep their shares: its score
// is near 0.
func (e *Engine) score(recs []rec) {
	const eps = 0.01
	for i := range recs {
		r := &recs[i]
		if r.dec != NoRule {
			continue
		}
		score := 0.0
		for j, v := range r.feats {
			if v == missing {
				continue
			}
			k := featKey(&r.p, j, v)
			// Leave the sample out of its own count: a value seen once
			// in the window (a random port) is no evidence.
			pw := float64(e.win[k]-1) / float64(e.winN)
			pb := 0.0
			if e.baseN > 0 {
				pb = e.base[k] / e.baseN
			}
			score += math.Log((pw + eps) / (pb + eps))
		}
		r.score = score
	}
}

// detect finds the window's anomalous samples and deploys rules for them.
func (e *Engine) detect(now time.Time) {
	if e.pps(e.winN, now) < e.cfg.Threshold {
		return
	}
	var A []pkt
	for _, b := range e.batches {
		if !b.inWin {
			continue
		}
		for _, r := range b.recs {
			if r.dec == NoRule && r.score >= math.Log(e.cfg.Ratio) && !e.matchedByActive(&r.p) {
				A = append(A, r.p)
			}
		}
	}
	if e.pps(len(A), now) < e.cfg.Threshold {
		e.standing(now)
		return
	}
	e.anomalies.Add(1)
	if now.Before(e.retry) {
		return
	}
	// Enough samples to tell a vector of 1%, few enough to bound a tick.
	if len(A) > maxAnalysed {
		stride := float64(len(A)) / maxAnalysed
		for i := range maxAnalysed {
			A[i] = A[int(float64(i)*stride)]
		}
		A = A[:maxAnalysed]
	}
	rules, err := Fingerprint(packets(A), packets(e.baseRing), e.cfg.Options)
	if err != nil {
		// What no rule describes now, a few more samples will not: the
		// next try waits, so a long anomaly costs little.
		e.retry = now.Add(retryAfter)
		e.noRule(now, len(A), err)
		return
	}
	// The baseline's rate, what the rules may not approach: a decayed
	// count of a steady rate is rate*HalfLife/ln 2.
	baseRate := 0.0
	if span := min(now.Sub(e.start).Seconds(), e.cfg.HalfLife.Seconds()/math.Ln2); span > 0 && !e.epoch.IsZero() {
		count := e.baseN * math.Exp2(-float64(now.Sub(e.epoch))/float64(e.cfg.HalfLife))
		baseRate = count * float64(e.cfg.SampleRate) / span
	}
	for _, r := range rules {
		n := 0
		for _, p := range A {
			if p.matches(&r.AutoRule) {
				n++
			}
		}
		pps := e.pps(n, now)
		bm := 0
		for _, p := range e.baseRing {
			if p.matches(&r.AutoRule) {
				bm++
			}
		}
		rb := 0.0
		if len(e.baseRing) > 0 {
			rb = baseRate * float64(bm) / float64(len(e.baseRing))
		}
		if pps < e.cfg.Threshold || pps < e.cfg.Ratio*rb {
			continue
		}
		e.deploy(now, r, pps)
	}
}

func (e *Engine) matchedByActive(p *pkt) bool {
	for _, sl := range e.slots {
		if sl != nil && p.matches(&sl.rule.AutoRule) {
			return true
		}
	}
	return false
}

func (e *Engine) noRule(now time.Time, n int, err error) {
	e.none.Add(1)
	if now.Sub(e.lastNone) < time.Second {
		return
	}
	e.lastNone = now
	e.log.Warn("auto: anomaly without a fingerprint", "samples", n, "pps", e.pps(n, now), "error", err)
}

func (e *Engine) deploy(now time.Time, r Rule, pps float64) {
	free := -1
	for i, sl := range e.slots {
		if sl == nil {
			free = i
			break
		}
	}
	if free < 0 {
		e.errs.Add(1)
		e.log.Error("auto: no free slot", "expr", r.Expr(), "pps", pps)
		return
	}
	r.State = e.state()
	if err := e.cfg.Deployer.Deploy(free, r.AutoRule); err != nil {
		e.retry = now.Add(retryAfter)
		e.errs.Add(1)
		e.log.Error("auto: deploy", "slot", free, "expr", r.Expr(), "error", err)
		return
	}
	e.slots[free] = &slot{rule: r, since: now, lastAbove: now}
	e.nActive.Add(1)
	e.deployed.Add(1)
	e.log.Info("auto: deploy", "slot", free, "state", stateName(r.State), "expr", r.Expr(),
		"pps", math.Round(pps), "samples", r.Samples, "coverage", r.Coverage, "fields", r.Fields)
}

func stateName(s l4drop.AutoState) string {
	if s == l4drop.AutoMonitor {
		return "monitor"
	}
	return "drop"
}

func (e *Engine) publish(now time.Time) {
	var out []Active
	for i, sl := range e.slots {
		if sl != nil {
			out = append(out, Active{Slot: i, Rule: sl.rule, Since: sl.since, PPS: e.pps(sl.count, now)})
		}
	}
	e.rmu.Lock()
	e.report = out
	e.rmu.Unlock()
}

// standing deploys a rule for a flood above the ceiling that the scores
// do not show, because the baseline holds it (it ran when the engine
// started, or grew slowly): a single vector of the window's samples,
// told from the rest of them (see standing in standing.go). The samples
// the rule matches leave the baseline, which never vouched for them.
func (e *Engine) standing(now time.Time) {
	// The baseline's samples without the vector are what a rule must
	// not match: the window alone holds too few.
	if e.cfg.Ceiling <= 0 || now.Before(e.standRetry) || len(e.baseRing) < minBaseline || e.pps(e.winN, now) < e.cfg.Ceiling {
		return
	}
	var W []pkt
	for _, b := range e.batches {
		if !b.inWin {
			continue
		}
		for _, r := range b.recs {
			if r.dec == NoRule && !e.matchedByActive(&r.p) {
				W = append(W, r.p)
			}
		}
	}
	// The samples of the ceiling's rate, in what is analysed.
	need := e.cfg.Ceiling / e.pps(1, now)
	all := len(W)
	if len(W) > maxAnalysed {
		need *= maxAnalysed / float64(len(W))
		stride := float64(len(W)) / maxAnalysed
		for i := range maxAnalysed {
			W[i] = W[int(float64(i)*stride)]
		}
		W = W[:maxAnalysed]
	}
	r, ok := standing(W, e.baseRing, int(math.Ceil(need)), e.cfg.Options)
	if !ok {
		// A busy but legitimate mix stays so: looking again every tick
		// would cost a fit per tick for nothing.
		e.standRetry = now.Add(4 * retryAfter)
		return
	}
	n := 0
	for _, p := range W {
		if p.matches(&r.AutoRule) {
			n++
		}
	}
	pps := e.pps(n, now) * float64(all) / float64(max(1, len(W)))
	e.anomalies.Add(1)
	e.log.Info("auto: flood above the ceiling, learned as normal until now", "expr", r.Expr(), "pps", math.Round(pps), "ceiling", e.cfg.Ceiling)
	before := e.nActive.Load()
	e.deploy(now, r, pps)
	if e.nActive.Load() > before {
		e.unlearn(&r.AutoRule)
	}
}

// unlearn takes the samples r matches out of the baseline: the ring loses
// them and the feature counts are made again from what it keeps (the
// counts cannot forget single samples).
func (e *Engine) unlearn(r *l4drop.AutoRule) {
	kept := e.baseRing[:0]
	// The ring's order from its oldest sample on.
	ring := append(append([]pkt(nil), e.baseRing[e.baseNext:]...), e.baseRing[:e.baseNext]...)
	for _, p := range ring {
		if !p.matches(r) {
			kept = append(kept, p)
		}
	}
	// Oldest first: admit appends the newest, or overwrites the oldest
	// at baseNext once the ring is full.
	e.baseRing, e.baseNext = kept, 0
	clear(e.base)
	e.baseN = 0
	w := 1.0
	if !e.epoch.IsZero() {
		w = e.weight(e.cfg.Now())
	}
	for i := range e.baseRing {
		p := &e.baseRing[i]
		e.baseN += w
		for j, v := range e.features(p) {
			if v != missing {
				e.base[featKey(p, j, v)] += w
			}
		}
	}
}
