package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/l4drop/l4drop/fingerprint"
	"github.com/l4drop/l4drop/l4drop"
)

// Auto is the component of l4drop run --auto: it feeds the samples to a
// fingerprint.Engine, which finds attacks in them and deploys rules into
// the running program's auto table (a map update: no clang, no reload).
type Auto struct {
	cfg    fingerprint.Config
	eng    *fingerprint.Engine
	d      *Daemon
	nrules atomic.Int64
	cancel context.CancelFunc
	done   chan error
}

// NewAuto returns the auto-mitigation component: threshold in packets per
// second (0: the engine's default), expire how long a rule outlives its
// attack (0: the default), monitor to deploy rules that count and sample
// without dropping.
func NewAuto(threshold float64, expire time.Duration, monitor bool) (*Auto, error) {
	return NewAutoConfig(fingerprint.Config{Threshold: threshold, Expire: expire, Monitor: monitor})
}

// NewAutoConfig returns the auto-mitigation component with the engine
// tuned by cfg (learning and quarantine periods, window, ratio...), for
// labs and tests; the sample rate, deployer, logger and slots are the
// daemon's, whatever cfg says.
func NewAutoConfig(cfg fingerprint.Config) (*Auto, error) {
	if cfg.Threshold < 0 {
		return nil, fmt.Errorf("%w: --auto-threshold %v: want more than 0", ErrConfig, cfg.Threshold)
	}
	if cfg.Expire < 0 {
		return nil, fmt.Errorf("%w: --auto-expire %v: want more than 0", ErrConfig, cfg.Expire)
	}
	return &Auto{cfg: cfg}, nil
}

// Name implements Component.
func (a *Auto) Name() string { return "auto" }

// Start implements Component: rules a previous daemon left in the table are
// adopted, so they expire as if this one had made them.
func (a *Auto) Start(ctx context.Context, d *Daemon) error {
	a.d = d
	var adopt []l4drop.AutoEntry
	err := d.Do(func(h *l4drop.Handle) error {
		a.cfg.SampleRate = h.State.Meta.SampleRate
		a.nrules.Store(int64(len(h.State.Meta.Rules)))
		var err error
		adopt, err = h.AutoRules()
		return err
	})
	if errors.Is(err, l4drop.ErrNoAuto) {
		return fmt.Errorf("auto: %w: rebuild the rules with this l4drop", err)
	}
	if err != nil {
		return fmt.Errorf("auto: %w", err)
	}
	if a.cfg.SampleRate == 0 {
		return errors.New("auto: sampling is off (sample_rate: 0 in the rule set): --auto learns from samples")
	}
	a.cfg.Deployer = a
	a.cfg.Logger = d.Logger()
	a.cfg.Slots = l4drop.AutoSlots
	if a.eng, err = fingerprint.NewEngine(a.cfg); err != nil {
		return fmt.Errorf("auto: %w", err)
	}
	for _, e := range adopt {
		if e.Rule.State == l4drop.AutoOff {
			continue
		}
		if err := a.eng.Adopt(e.Slot, e.Rule, e.Since); err != nil {
			d.Logger().Warn("auto: rule left by an earlier run not adopted", "slot", e.Slot, "expr", e.Rule.Expr(), "err", err)
		}
	}
	ctx, a.cancel = context.WithCancel(ctx)
	a.done = make(chan error, 1)
	go func() { a.done <- a.eng.Run(ctx) }()
	return nil
}

// Deploy implements fingerprint.Deployer.
func (a *Auto) Deploy(slot int, r l4drop.AutoRule) error {
	return a.d.Do(func(h *l4drop.Handle) error { return h.SetAutoRule(slot, r) })
}

// Remove implements fingerprint.Deployer.
func (a *Auto) Remove(slot int) error {
	return a.d.Do(func(h *l4drop.Handle) error { return h.ClearAutoRule(slot) })
}

// Sample implements SampleSink.
func (a *Auto) Sample(s l4drop.Sample) {
	p, ok := fingerprint.FromFrame(s.Data)
	if !ok {
		return
	}
	n := a.nrules.Load()
	fs := fingerprint.Sample{Packet: p.Data, Family: p.Family, Len: s.Len - (len(s.Data) - len(p.Data))}
	switch {
	case s.Rule == l4drop.NoRule || int64(s.Rule) == n:
		fs.Decision = fingerprint.NoRule
	case int64(s.Rule) < n && s.Action == "pass":
		fs.Decision = fingerprint.FilePass
	case int64(s.Rule) < n:
		fs.Decision = fingerprint.FileDrop
	default:
		fs.Decision = fingerprint.Auto
		fs.Slot = int(s.Rule - l4drop.AutoRuleBase(int(n)))
	}
	a.eng.Sample(fs)
}

// Reloaded implements Reloader.
func (a *Auto) Reloaded(st *l4drop.State) { a.nrules.Store(int64(len(st.Meta.Rules))) }

// Dropped implements DropCounter.
func (a *Auto) Dropped() uint64 { return a.eng.Metrics().SamplesLost }

// Rules returns the rules the engine deployed.
func (a *Auto) Rules() []fingerprint.Active { return a.eng.Rules() }

// Metrics returns the engine's counts.
func (a *Auto) Metrics() fingerprint.Metrics { return a.eng.Metrics() }

// Stop implements Component. The rules stay in the table: a restarted
// daemon adopts them.
func (a *Auto) Stop() error {
	if a.cancel == nil {
		return nil
	}
	a.cancel()
	err := <-a.done
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
