package fingerprint

// standingShare is the share of the traffic a single vector must be to be
// a flood without a baseline: legitimate traffic is a mix, whose largest
// part leaves a good deal to the others.
const standingShare = 0.8

// standing finds a flood in traffic without a baseline to compare it with
// (a flood already running when the engine started is learned as normal):
// a single vector, at least minMatch of the samples A and standingShare
// of them, told from the rest of A and from the baseline's samples B. A
// vector is one packet template: the samples that agree on every field
// whose values the traffic keeps to a few or one value dominates (not
// random ports, addresses, identifications, names), but one (a tool sending with two TTLs). A
// legitimate mix is several templates that differ in more than one field
// (clients' stacks, queries); with fewer than opts.MinSamples samples
// outside the vector there is nothing to tell it from, and no rule.
func standing(A, B []pkt, minMatch int, opts Options) (Rule, bool) {
	opts = opts.withDefaults()
	if len(A) < minMatch || float64(len(A))*(1-standingShare) < float64(opts.MinSamples) {
		return Rule{}, false
	}
	groups := map[groupKey][]int{}
	for i := range A {
		k := groupKey{A[i].h.family, A[i].h.proto}
		groups[k] = append(groups[k], i)
	}
	for k, idx := range groups {
		if len(idx) < minMatch || float64(len(idx)) < standingShare*float64(len(A)) {
			continue
		}
		g := make([]pkt, len(idx))
		for j, i := range idx {
			g[j] = A[i]
		}
		fs := fields(k.fam, k.proto)
		var stable []*field
		for i := range fs {
			// A field is stable if the traffic keeps it to a few values,
			// or one value holds half of it (a field the flood fixes,
			// random in the rest).
			counts := map[uint32]int{}
			top := 0
			for j := range g {
				v, _ := fs[i].value(&g[j])
				counts[v]++
				top = max(top, counts[v])
			}
			if len(counts) <= 32 || top*2 >= len(g) {
				stable = append(stable, &fs[i])
			}
		}
		// A sample's signature is the sum of its stable fields' mixed
		// values: without field free it is that sum less the field's.
		mix := func(i int, p *pkt) uint64 {
			v, ok := stable[i].value(p)
			if !ok {
				v = 1<<32 - 1
			}
			x := (uint64(i)<<32 | uint64(v)) * 0x9e3779b97f4a7c15
			x ^= x >> 29
			return x * 0xbf58476d1ce4e5b9
		}
		parts := make([][]uint64, len(g))
		sums := make([]uint64, len(g))
		for j := range g {
			parts[j] = make([]uint64, len(stable))
			for i := range stable {
				parts[j][i] = mix(i, &g[j])
				sums[j] += parts[j][i]
			}
		}
		bestN, bestFree := 0, -1
		var bestSig uint64
		counts := map[uint64]int{}
		for free := -1; free < len(stable); free++ {
			clear(counts)
			for j := range g {
				s := sums[j]
				if free >= 0 {
					s -= parts[j][free]
				}
				counts[s]++
			}
			for s, n := range counts {
				if n > bestN {
					bestN, bestFree, bestSig = n, free, s
				}
			}
		}
		if bestN < minMatch || float64(bestN) < standingShare*float64(len(A)) || len(A)-bestN < opts.MinSamples {
			continue
		}
		in := func(p *pkt) bool {
			if p.h.family != k.fam || p.h.proto != k.proto {
				return false
			}
			var s uint64
			for i := range stable {
				if i != bestFree {
					s += mix(i, p)
				}
			}
			return s == bestSig
		}
		var sub, rest []pkt
		for j := range A {
			if in(&A[j]) {
				sub = append(sub, A[j])
			} else {
				rest = append(rest, A[j])
			}
		}
		for j := range B {
			if !in(&B[j]) {
				rest = append(rest, B[j])
			}
		}
		r, ok := fit(sub, rest, k, opts)
		if !ok {
			continue
		}
		return r, true
	}
	return Rule{}, false
}
