package scenario

import (
	"fmt"
	"time"

	"github.com/l4drop/l4drop/fingerprint"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

// mitigatedWindow is how long the attack must stay 99% dropped from the
// moment that counts as mitigated.
const mitigatedWindow = 250 * time.Millisecond

// judge fills the result from the readings, the tap, and the packets
// made again offline.
func (r *runner) judge(attackStart, attackEnd time.Time, attackRes, legitRes lab.Result, tp *tap) error {
	res := r.res
	secs := func(d time.Duration) *float64 { s := d.Seconds(); return &s }
	res.AttackSent = attackRes.Sent
	if attackRes.Elapsed > 0 {
		res.AttackPPS = float64(attackRes.Sent) / attackRes.Elapsed.Seconds()
	}
	res.LegitSent = legitRes.Sent
	res.LegitOK = min(tp.legitN.Load(), res.LegitSent)
	res.LegitLost = res.LegitSent - res.LegitOK

	// The readings: the last before the attack, those during it, and
	// the first once it settled.
	pts := r.points
	first := 0
	for i, p := range pts {
		if !p.t.After(attackStart) {
			first = i
		}
	}
	end := len(pts) - 1
	for i := first; i < len(pts); i++ {
		if pts[i].t.After(attackEnd.Add(300 * time.Millisecond)) {
			end = i
			break
		}
	}
	if len(pts) > 0 {
		res.AttackDropped = min(pts[end].dropped-pts[first].dropped, res.AttackSent)
	}
	ttm := -1
	for i := first; i < end && pts[i].t.Before(attackEnd); i++ {
		j := i + 1
		for j < end && pts[j].t.Sub(pts[i].t) < mitigatedWindow {
			j++
		}
		sent := pts[j].attackSent - pts[i].attackSent
		if pts[j].t.After(attackEnd) {
			sent = res.AttackSent - pts[i].attackSent
		}
		if sent >= 20 && (pts[j].dropped-pts[i].dropped)*100 >= sent*99 {
			ttm = i
			break
		}
	}
	if ttm >= 0 {
		res.TimeToMitigate = secs(max(0, pts[ttm].t.Sub(attackStart)))
		if sent := res.AttackSent - pts[ttm].attackSent; sent > 0 {
			res.AttackDroppedPct = 100 * float64(min(pts[end].dropped-pts[ttm].dropped, sent)) / float64(sent)
		}
	} else if res.AttackSent > 0 {
		res.AttackDroppedPct = 100 * float64(res.AttackDropped) / float64(res.AttackSent)
	}

	// The file's rules, then the auto rules.
	if r.meta != nil {
		for i, mr := range r.meta.Rules {
			if mr.Name == placeholder && r.mode == ModeAuto {
				continue
			}
			rl := Rule{Name: mr.Name, Action: mr.Action}
			if i < len(r.counted) {
				rl.Packets = r.counted[i]
			}
			res.Rules = append(res.Rules, rl)
		}
	}
	var lastRemoved time.Time
	allGone := len(r.rules) > 0
	for _, rl := range r.rules {
		rl.Deployed = secs(rl.since.Sub(attackStart))
		if rl.removed.IsZero() {
			allGone = false
		} else {
			rl.Removed = secs(rl.removed.Sub(attackEnd))
			if rl.removed.After(lastRemoved) {
				lastRemoved = rl.removed
			}
		}
	}
	if allGone {
		res.ExpiredAfter = secs(lastRemoved.Sub(attackEnd))
	}
	if len(r.rules) > 0 {
		since := r.rules[0].since.Sub(tp.start)
		n, allowed, last := tp.attackSince(since + 100*time.Millisecond)
		res.AttackAtServer, res.AllowedAtServer = n, allowed
		if n > allowed {
			res.LastOtherAtServer = secs(last - since)
		}
	}

	// Every legitimate packet sent, against every auto rule.
	autoMatches := func(p fingerprint.Packet, count func(k int)) bool {
		any := false
		for k, rl := range r.rules {
			if rl.rule.State == l4drop.AutoDrop && fingerprint.Match(&rl.rule, p) {
				count(k)
				any = true
			}
		}
		return any
	}
	if len(r.rules) > 0 {
		// A legitimate packet the attack's templates could have sent is
		// one no rule can tell apart: counted, not judged (the tap counts
		// it as attack too).
		lab.SentFrames(r.legitT, r.opts.Seed, legitRes.PerTemplate, func(_ int, f []byte) bool {
			if tp.attack.Match(f, len(f)) >= 0 {
				res.LegitLikeAttack++
				return true
			}
			if p, ok := fingerprint.FromFrame(f); ok && autoMatches(p, func(k int) { r.rules[k].LegitMatched++ }) {
				res.LegitDropped++
			}
			return true
		})
		matched := make([]uint64, len(r.rules))
		lab.SentFrames(r.attackT, r.opts.Seed+1, attackRes.PerTemplate, func(_ int, f []byte) bool {
			if p, ok := fingerprint.FromFrame(f); ok {
				autoMatches(p, func(k int) { matched[k]++ })
			}
			return true
		})
		for k, rl := range r.rules {
			if res.AttackSent > 0 {
				rl.AttackMatchedPct = 100 * float64(matched[k]) / float64(res.AttackSent)
			}
		}
	}
	if r.mode == ModeRules {
		n, err := fileDrops(r.obj, r.legitT, r.opts.Seed, legitRes.PerTemplate)
		if err != nil {
			return err
		}
		res.LegitDropped = n
	}
	for _, rl := range r.rules {
		res.Rules = append(res.Rules, *rl)
	}
	return nil
}

// fileDrops runs every legitimate packet sent through the rule set, in
// the kernel, and counts the drops.
func fileDrops(obj []byte, ts []lab.Template, seed uint64, per []uint64) (uint64, error) {
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		return 0, err
	}
	defer d.Close()
	var n uint64
	var runErr error
	lab.SentFrames(ts, seed, per, func(_ int, f []byte) bool {
		v, err := d.Run(f)
		if err != nil {
			runErr = fmt.Errorf("judge legitimate traffic: %w", err)
			return false
		}
		if v.Action == "drop" {
			n++
		}
		return true
	})
	return n, runErr
}
