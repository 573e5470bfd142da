// Package scenario runs one of lab.Scenarios in a fresh lab against a
// mitigation, and measures it: legitimate traffic throughout, answered by
// real servers; a learning period; an attack that shares the legitimate
// traffic's destination, protocol and port; its end. The mitigation is
// L4Drop's daemon (l4drop/daemon) in this process, with auto rules (the
// fingerprint engine) or a rules file, or nothing.
//
// What it reports is measured, not inferred: the program's own counters
// say what it dropped, a packet socket on the server's interface sees
// what reached the server, and every legitimate packet sent is made again
// offline (the generator's packets follow from its seed) and judged
// against every auto rule deployed during the run.
package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/fingerprint"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
	"github.com/l4drop/l4drop/l4drop/daemon"
	"github.com/l4drop/l4drop/lab"
)

// ErrOptions is returned for options Run cannot use.
var ErrOptions = errors.New("bad scenario options")

// Modes of mitigation.
const (
	ModeAuto  = "auto"  // l4drop run --auto: rules the daemon finds itself
	ModeNone  = "none"  // nothing: what the attack does to the server
	ModeRules = "rules" // a rules file, as in rules=FILE
)

// Options configure a run. The zero value of a field is its default.
type Options struct {
	// Mode is "auto" (default), "none" or "rules=FILE".
	Mode string
	// AttackRate and LegitRate are the target rates in packets per
	// second (defaults 25,000 and 2,500). Where the kernel refuses live
	// frames the generator sends from a packet socket, and reaches some
	// tens of thousands of packets a second on a busy 2-core machine:
	// the defaults fit that.
	AttackRate, LegitRate float64
	// Seed makes the packets (default 1); the attack uses Seed+1.
	Seed uint64
	// Learn is how long legitimate traffic runs alone before the attack
	// (default 5 s); Duration how long the attack lasts (default 10 s).
	Learn, Duration time.Duration
	// Threshold, Expire and SampleRate are the daemon's --auto-threshold
	// (default 10,000 pps), --auto-expire (default 5 s) and the rule
	// set's sample_rate (default 8).
	Threshold  float64
	Expire     time.Duration
	SampleRate uint32
	// EngineLearn is the engine's learning period (fingerprint.Config
	// Learn, default 2 s); its quarantine is the engine's default, 2 s.
	EngineLearn time.Duration
	// FlashCrowd replaces the attack with more of the legitimate mix:
	// five times its rate on top of it, six times in all.
	FlashCrowd bool
	// Allow, in auto mode, is a pcap-filter expression (over the IP
	// packet) of a pass rule in the rules file, which auto rules come
	// after.
	Allow string
	// Restart, if > 0, stops the daemon that long after the first auto
	// rule appears and starts a new one: the rules stay in the program
	// meanwhile and the new daemon adopts them.
	Restart time.Duration
	// Logger gets the daemon's log (default: discarded).
	Logger *slog.Logger
}

// WithDefaults returns o with its zero fields set to their defaults.
func (o Options) WithDefaults() Options {
	if o.AttackRate == 0 {
		o.AttackRate = 25000
	}
	if o.LegitRate == 0 {
		o.LegitRate = 2500
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Learn == 0 {
		o.Learn = 5 * time.Second
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.Threshold == 0 {
		o.Threshold = 10000
	}
	if o.Expire == 0 {
		o.Expire = 5 * time.Second
	}
	if o.SampleRate == 0 {
		o.SampleRate = 8
	}
	if o.EngineLearn == 0 {
		o.EngineLearn = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o
}

func (o *Options) defaults() (mode, file string, err error) {
	*o = o.WithDefaults()
	switch {
	case o.AttackRate < 0 || o.LegitRate < 0 || math.IsNaN(o.AttackRate) || math.IsNaN(o.LegitRate):
		return "", "", fmt.Errorf("%w: rates %v and %v: want more than 0", ErrOptions, o.AttackRate, o.LegitRate)
	case o.Learn < 0 || o.Duration < 0 || o.Expire < 0 || o.EngineLearn < 0 || o.Restart < 0:
		return "", "", fmt.Errorf("%w: durations must be more than 0", ErrOptions)
	case o.Threshold < 0:
		return "", "", fmt.Errorf("%w: threshold %v: want more than 0", ErrOptions, o.Threshold)
	}
	mode = o.Mode
	if mode == "" {
		mode = ModeAuto
	}
	if f, ok := strings.CutPrefix(mode, ModeRules+"="); ok {
		if f == "" {
			return "", "", fmt.Errorf("%w: mode rules=FILE: no file", ErrOptions)
		}
		mode, file = ModeRules, f
	}
	switch mode {
	case ModeAuto, ModeNone, ModeRules:
	default:
		return "", "", fmt.Errorf("%w: mode %q: want auto, none or rules=FILE", ErrOptions, o.Mode)
	}
	if mode != ModeAuto && (o.Allow != "" || o.Restart > 0) {
		return "", "", fmt.Errorf("%w: an allow rule and a restart are for mode auto", ErrOptions)
	}
	return mode, file, nil
}

// Result is what a run measured. Times are in seconds.
type Result struct {
	Scenario string `json:"scenario"`
	Mode     string `json:"mode"`
	// AttackPPS is the rate the attack was sent at, measured.
	AttackPPS float64 `json:"attack_pps"`
	// TimeToMitigate is from the attack's start to the first moment from
	// which a quarter of a second of attack was at least 99% dropped;
	// nil if that never came.
	TimeToMitigate *float64 `json:"time_to_mitigate_s"`
	// AttackDroppedPct is the share of the attack dropped from then to
	// its end (of the whole attack if it was never mitigated).
	AttackDroppedPct float64 `json:"attack_dropped_pct"`
	// LegitSent counts the legitimate packets sent, LegitOK those that
	// reached the server's stack (where its servers answer them).
	LegitSent uint64 `json:"legit_sent"`
	LegitOK   uint64 `json:"legit_ok"`
	// LegitDropped counts the legitimate packets sent that a drop rule
	// matches: in auto mode, any auto rule deployed during the run, at
	// any moment (so it is an upper bound); with a rules file, the file's
	// rules, run by the kernel over each packet.
	LegitDropped uint64 `json:"legit_dropped"`
	// LegitLikeAttack counts the legitimate packets sent that the
	// attack's own templates could have sent, byte for byte outside their
	// random fields (a users' template with a random field the attack
	// fixes sends the attack's value now and then): no rule can tell them
	// apart, so LegitDropped leaves them out.
	LegitLikeAttack uint64 `json:"legit_like_attack,omitempty"`
	Rules           []Rule `json:"rules"`
	// ExpiredAfter is from the attack's end to the removal of the last
	// auto rule; nil if a rule was still there at the end (or none came).
	ExpiredAfter *float64 `json:"expired_after_s"`

	// AttackSent and AttackDropped count the whole attack; the program's
	// drop counters say what it dropped.
	AttackSent    uint64 `json:"attack_sent"`
	AttackDropped uint64 `json:"attack_dropped"`
	// AttackAtServer counts the attack packets that reached the server
	// (by the kernel's receive time) from 100 ms after the first rule
	// appeared; AllowedAtServer those of them the allow rule
	// (Options.Allow) matches. LastOtherAtServer is when the last of the
	// others arrived, in seconds after the rule: a leak that stops soon
	// after the rule is the rule landing, one that goes on is the rule
	// missing packets.
	AttackAtServer    uint64   `json:"attack_at_server_after_rule"`
	AllowedAtServer   uint64   `json:"allowed_at_server_after_rule,omitempty"`
	LastOtherAtServer *float64 `json:"last_other_at_server_s,omitempty"`
	// LegitLost counts legitimate packets sent that did not reach the
	// server, whatever the cause (the sender's backlog included).
	LegitLost uint64 `json:"legit_lost"`
	// TapLost counts frames the server-side counting socket missed.
	TapLost uint64 `json:"tap_lost"`
	// PacketSocket says the generator sent from a packet socket: the
	// kernel refused live frames.
	PacketSocket bool   `json:"packet_socket"`
	Restarted    bool   `json:"restarted,omitempty"`
	Seed         uint64 `json:"seed"`
}

// Rule is a rule of the run: an auto rule, or one of the file's.
type Rule struct {
	Name   string `json:"name"`
	Auto   bool   `json:"auto"`
	Action string `json:"action"`
	Expr   string `json:"expr,omitempty"`
	// Deployed is when the rule appeared, from the attack's start;
	// Removed when it went, from the attack's end.
	Deployed *float64 `json:"deployed_s,omitempty"`
	Removed  *float64 `json:"removed_s,omitempty"`
	// Packets is what the program counted for it.
	Packets uint64 `json:"packets"`
	// AttackMatchedPct is the share of the attack's packets (all sent)
	// the rule matches, judged offline; LegitMatched the legitimate
	// packets it matches.
	AttackMatchedPct float64 `json:"attack_matched_pct,omitempty"`
	LegitMatched     uint64  `json:"legit_matched"`

	rule           l4drop.AutoRule
	since, removed time.Time
	slot           int
}

// point is one reading of the counters.
type point struct {
	t          time.Time
	attackSent uint64
	dropped    uint64
	autoActive int
}

const placeholder = "placeholder"

// rulesYAML is the rules file of auto mode: the allow rule, or a rule
// that matches nothing (a rule set has at least one rule).
func rulesYAML(sampleRate uint32, allow string) string {
	rule := fmt.Sprintf("  - name: %s\n    expr: \"ip proto 253\"\n    action: pass\n", placeholder)
	if allow != "" {
		rule = fmt.Sprintf("  - name: allow\n    expr: %q\n    action: pass\n", allow)
	}
	return fmt.Sprintf("sample_rate: %d\nrules:\n%s", sampleRate, rule)
}

// Run runs sc in a fresh lab, removed at the end.
func Run(ctx context.Context, sc lab.Scenario, opts Options) (Result, error) {
	mode, file, err := opts.defaults()
	if err != nil {
		return Result{}, err
	}
	res := Result{Scenario: sc.Name, Mode: opts.Mode, Seed: opts.Seed}
	if res.Mode == "" {
		res.Mode = ModeAuto
	}
	attackT, legitT, err := sc.Templates()
	if err != nil {
		return res, err
	}
	if opts.FlashCrowd {
		attackT = legitT
		opts.AttackRate = 5 * opts.LegitRate
		res.Scenario += " (flash crowd)"
	}
	var obj []byte
	switch mode {
	case ModeAuto:
		rs, err := build.ParseRuleSet("auto.yaml", []byte(rulesYAML(opts.SampleRate, opts.Allow)))
		if err != nil {
			return res, fmt.Errorf("%w: %w", ErrOptions, err)
		}
		if obj, _, err = build.Build(rs, build.BuildOptions{}); err != nil {
			return res, err
		}
	case ModeRules:
		text, err := os.ReadFile(file)
		if err != nil {
			return res, fmt.Errorf("mode rules=%s: %w", file, err)
		}
		rs, err := build.ParseRuleSet(file, text)
		if err != nil {
			return res, err
		}
		if obj, _, err = build.Build(rs, build.BuildOptions{}); err != nil {
			return res, err
		}
	}
	r := &runner{opts: opts, mode: mode, obj: obj, attackT: attackT, legitT: legitT, res: &res}
	if opts.Allow != "" {
		if r.allow, err = compileAllow(opts.Allow); err != nil {
			return res, fmt.Errorf("%w: %w", ErrOptions, err)
		}
	}
	err = lab.Run(ctx, r.run)
	return res, err
}

// runner is one run.
type runner struct {
	opts            Options
	mode            string
	obj             []byte
	attackT, legitT []lab.Template
	allow           *cbpf.Filter
	res             *Result

	l     *lab.Lab
	load  l4drop.LoadOptions
	dmu   sync.Mutex
	d     *daemon.Daemon
	meta  *l4drop.Meta
	rules []*Rule // auto rules, in order of appearance
	open  map[int]*Rule
	// per counter index: the last reading, and what was counted so far
	last    []uint64
	counted []uint64
	dropped uint64
	points  []point
}

func (r *runner) startDaemon(ctx context.Context) error {
	cfg := daemon.Config{
		Object: func(context.Context) ([]byte, error) { return r.obj, nil },
		Load:   r.load, Logger: r.opts.Logger,
	}
	if r.mode == ModeAuto {
		a, err := daemon.NewAutoConfig(fingerprint.Config{Threshold: r.opts.Threshold, Expire: r.opts.Expire, Learn: r.opts.EngineLearn})
		if err != nil {
			return err
		}
		cfg.Components = append(cfg.Components, a)
	}
	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	r.dmu.Lock()
	r.d = d
	r.dmu.Unlock()
	return nil
}

func (r *runner) stopDaemon() error {
	r.dmu.Lock()
	d := r.d
	r.d = nil
	r.dmu.Unlock()
	if d == nil {
		return nil
	}
	return d.Stop()
}

func (r *runner) run(ctx context.Context, l *lab.Lab) (err error) {
	r.l = l
	srv, err := startServers(l, r.legitT)
	if err != nil {
		return err
	}
	defer srv.close()
	tp, err := openTap(l, r.attackT, r.legitT, r.allow)
	if err != nil {
		return err
	}
	tapClosed := false
	defer func() {
		if !tapClosed {
			tp.close()
		}
	}()
	legit, err := lab.NewGenerator(l.Inet, l.InetIf, r.legitT, r.opts.Seed)
	if err != nil {
		return err
	}
	defer legit.Close()
	attack, err := lab.NewGenerator(l.Inet, l.InetIf, r.attackT, r.opts.Seed+1)
	if err != nil {
		return err
	}
	defer attack.Close()

	if r.mode != ModeNone {
		root, err := l.PinDir()
		if err != nil {
			return err
		}
		r.load = l4drop.LoadOptions{Iface: l.ServerIf, Netns: l.Server.Name, Root: root}
		if r.meta, err = l4drop.ReadMeta(r.obj); err != nil {
			return err
		}
		if err := r.startDaemon(ctx); err != nil {
			return err
		}
		defer func() {
			err = errors.Join(err, r.stopDaemon())
			if uerr := l4drop.Unload(l4drop.Dir(root, l.ServerIf, l.Server.Name)); uerr != nil && !errors.Is(uerr, l4drop.ErrNotLoaded) {
				err = errors.Join(err, uerr)
			}
		}()
	}

	// Legitimate traffic throughout.
	lctx, stopLegit := context.WithCancel(ctx)
	defer stopLegit()
	var legitRes lab.Result
	var legitErr error
	legitDone := make(chan struct{})
	go func() {
		defer close(legitDone)
		legitRes, legitErr = legit.Run(lctx, lab.RunOptions{Rate: r.opts.LegitRate})
	}()

	// The counters, every 50 ms, until the end.
	pctx, stopPoll := context.WithCancel(ctx)
	pollDone := make(chan struct{})
	var pmu sync.Mutex
	go func() {
		defer close(pollDone)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			pmu.Lock()
			r.points = append(r.points, r.poll(attack))
			pmu.Unlock()
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	stopAll := func() {
		stopPoll()
		<-pollDone
		stopLegit()
		<-legitDone
	}
	defer func() {
		select {
		case <-pollDone:
		default:
			stopAll()
		}
	}()

	if !sleep(ctx, r.opts.Learn) {
		return ctx.Err()
	}
	attackStart := time.Now()
	var attackRes lab.Result
	var attackErr error
	attackDone := make(chan struct{})
	go func() {
		defer close(attackDone)
		attackRes, attackErr = attack.Run(ctx, lab.RunOptions{Rate: r.opts.AttackRate, Duration: r.opts.Duration})
	}()
	if r.opts.Restart > 0 {
		if err := r.restart(ctx, attackStart, attackDone, &pmu); err != nil {
			return err
		}
	}
	<-attackDone
	attackEnd := time.Now()
	if attackErr != nil {
		return attackErr
	}
	// The tail: auto rules expire Expire after their traffic fell below
	// the threshold; 5 s more is the most a rule may take.
	tail := time.Second
	if r.mode == ModeAuto {
		tail = r.opts.Expire + 6*time.Second
	}
	for time.Since(attackEnd) < tail && ctx.Err() == nil {
		sleep(ctx, 100*time.Millisecond)
		pmu.Lock()
		p := r.points[len(r.points)-1]
		pmu.Unlock()
		if r.mode == ModeAuto && p.autoActive == 0 && time.Since(attackEnd) > time.Second {
			break
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	stopAll()
	if legitErr != nil && !errors.Is(legitErr, context.Canceled) {
		return legitErr
	}
	// What is in flight reaches the tap.
	time.Sleep(200 * time.Millisecond)
	r.res.TapLost = tp.close()
	tapClosed = true
	r.res.PacketSocket = attack.PacketSocket() || legit.PacketSocket()
	return r.judge(attackStart, attackEnd, attackRes, legitRes, tp)
}

// restart stops the daemon Restart after the first auto rule appeared
// and starts a new one.
func (r *runner) restart(ctx context.Context, attackStart time.Time, attackDone chan struct{}, pmu *sync.Mutex) error {
	for {
		pmu.Lock()
		n := len(r.rules)
		pmu.Unlock()
		if n > 0 {
			break
		}
		select {
		case <-attackDone:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	if !sleep(ctx, r.opts.Restart) {
		return ctx.Err()
	}
	r.opts.Logger.Info("scenario: stopping the daemon during the attack", "after_attack_start", time.Since(attackStart))
	if err := r.stopDaemon(); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	sleep(ctx, 200*time.Millisecond)
	if err := r.startDaemon(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	r.res.Restarted = true
	return nil
}

// poll reads the attack's progress and the program's counters and auto
// rules.
func (r *runner) poll(attack *lab.Generator) point {
	p := point{t: time.Now()}
	p.attackSent, _ = attack.Sent()
	r.dmu.Lock()
	d := r.d
	r.dmu.Unlock()
	if d == nil {
		p.dropped = r.dropped
		p.autoActive = len(r.open)
		return p
	}
	var counters []uint64
	var autos []l4drop.AutoEntry
	err := d.Do(func(h *l4drop.Handle) error {
		cs, err := h.ReadCounters()
		if err != nil {
			return err
		}
		for _, c := range cs {
			counters = append(counters, c.Packets)
		}
		if r.mode == ModeAuto {
			autos, err = h.AutoRules()
		}
		return err
	})
	if err == nil {
		r.count(counters, autos, p.t)
	}
	p.dropped = r.dropped
	p.autoActive = len(r.open)
	return p
}

// count adds what the counters counted since the last reading. A slot's
// counter starts from zero when a rule is deployed in it.
func (r *runner) count(counters []uint64, autos []l4drop.AutoEntry, now time.Time) {
	if r.last == nil {
		r.last = make([]uint64, len(counters))
		r.counted = make([]uint64, len(counters))
		r.open = map[int]*Rule{}
	}
	nrules := len(r.meta.Rules)
	for i, v := range counters {
		if i >= len(r.last) {
			break
		}
		add := v - r.last[i]
		if v < r.last[i] {
			add = v
		}
		r.last[i] = v
		r.counted[i] += add
		switch {
		case i < nrules:
			if r.meta.Rules[i].Action == "drop" {
				r.dropped += add
			}
		case i > nrules:
			r.dropped += add
			if rl := r.open[i-nrules-1]; rl != nil {
				rl.Packets += add
			}
		}
	}
	seen := map[int]bool{}
	for _, e := range autos {
		if e.Rule.State == l4drop.AutoOff {
			continue
		}
		seen[e.Slot] = true
		if rl := r.open[e.Slot]; rl != nil && rl.since.Equal(e.Since) && rl.Expr == e.Rule.Expr() {
			continue
		}
		if rl := r.open[e.Slot]; rl != nil {
			rl.removedAt(now)
		}
		rl := &Rule{Name: fmt.Sprintf("auto-%d", e.Slot), Auto: true, Action: "drop", Expr: e.Rule.Expr(), rule: e.Rule, since: e.Since, slot: e.Slot}
		if e.Rule.State == l4drop.AutoMonitor {
			rl.Action = "monitor"
		}
		r.open[e.Slot] = rl
		r.rules = append(r.rules, rl)
	}
	for slot, rl := range r.open {
		if !seen[slot] {
			rl.removedAt(now)
			delete(r.open, slot)
		}
	}
}

func (rl *Rule) removedAt(t time.Time) { rl.removed = t }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
