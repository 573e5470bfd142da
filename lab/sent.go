package lab

import "github.com/l4drop/l4drop/internal/splitmix"

// SentFrames calls fn with every frame a Generator seeded with seed sent of
// templates ts, given how many it sent of each (Result.PerTemplate): the
// k-th frame of template i is the same whatever the rate or the order of
// sending, so a run can be judged offline, packet by packet. fn returning
// false stops the walk.
func SentFrames(ts []Template, seed uint64, perTemplate []uint64, fn func(tmpl int, frame []byte) bool) {
	for i := range ts {
		if i >= len(perTemplate) {
			return
		}
		s := splitmix.Mix(seed + uint64(i)*0x9e3779b97f4a7c15)
		for k := uint64(0); k < perTemplate[i]; k++ {
			if !fn(i, ts[i].frame(s, k)) {
				return
			}
		}
	}
}

// Matcher tells frames of a set of templates apart: a frame is a
// template's if it has its length and its bytes everywhere but in the
// random fields and the checksums.
type Matcher struct {
	ts    []Template
	fixed [][]bool
}

// NewMatcher returns a Matcher for ts.
func NewMatcher(ts []Template) *Matcher {
	m := &Matcher{ts: ts}
	for _, t := range ts {
		fixed := make([]bool, len(t.Frame))
		for i := range fixed {
			fixed[i] = true
		}
		for _, f := range t.Fields {
			for b := max(f.Off, 0); b < f.Off+f.Len && b < len(fixed); b++ {
				fixed[b] = false
			}
		}
		if lo, ok := parseLayout(t.Frame); ok {
			for _, c := range []int{lo.ipCsum, lo.l4Csum} {
				if c >= 0 {
					fixed[c], fixed[c+1] = false, false
				}
			}
		}
		m.fixed = append(m.fixed, fixed)
	}
	return m
}

// Match returns the index of the first template frame is one of, or -1.
// frame may be the first bytes of a frame of wireLen bytes (0:
// len(frame)): the bytes beyond are taken as matching.
func (m *Matcher) Match(frame []byte, wireLen int) int {
	if wireLen < len(frame) {
		wireLen = len(frame)
	}
	for i, t := range m.ts {
		if wireLen != len(t.Frame) {
			continue
		}
		ok := true
		for b, fixed := range m.fixed[i][:len(frame)] {
			if fixed && frame[b] != t.Frame[b] {
				ok = false
				break
			}
		}
		if ok {
			return i
		}
	}
	return -1
}
