package build

import (
	"errors"
	"fmt"
	"strings"
)

// RateLimit is a rule's ratelimit action: packets the rule matches pass at
// Rate packets a second, with bursts of up to Burst packets; packets over
// the limit are dropped. The limit holds for the whole rule, or for each
// source address or network (Per).
//
// Each limit is a token bucket kept as its theoretical arrival time (GCRA):
// one 8-byte word, shared by all CPUs and updated with an atomic
// compare-and-swap, so the limit is exact however the traffic spreads over
// CPUs and receive queues. Buckets kept per CPU (rate/ncpu each) cost about
// the same per packet here (see ratelimit_test.go) but let a source whose
// packets all land on one queue through at 1/ncpu of its rate and a spread
// one at its full rate: they were not chosen.
//
// Per source, the buckets live in an array of sets of four ways, 16 bytes a
// way, chosen by a keyed hash of the source address masked to the prefix:
// twice MaxSources ways (rounded up to a power of two), 32 MiB for the
// default of 2^20 sources. A packet reads one set, 64 bytes, where an LRU
// hash walked a bucket's chain and compared keys: at a million sources,
// about 200 against 460 ns a packet above parse-and-drop here, side by
// side in TestRatelimitCost. A new source takes
// the way of its set whose bucket is fullest, so a source the table has
// forgotten starts again with a full burst, as it did in the LRU hash:
// MaxSources should exceed the number of sources active within Burst/Rate
// seconds. With as many active sources as MaxSources, about 4 % of them
// find their set full of others at some time.
type RateLimit struct {
	// Rate is the sustained rate in packets a second, at least 1.
	Rate uint64
	// Burst is how many packets may pass at once after a quiet time; 0
	// means 1.
	Burst uint64
	// Per is what one bucket covers: PerRule, or PerSource with the
	// prefixes below.
	Per RateLimitPer
	// Prefix4 and Prefix6 are the prefix lengths source addresses are
	// masked to for PerSource: 1-32 and 1-128.
	Prefix4, Prefix6 int
	// MaxSources bounds the per-source table; 0 means DefaultMaxSources.
	MaxSources uint32
}

// RateLimitPer says what one token bucket covers.
type RateLimitPer int

const (
	// PerRule keeps one bucket for every packet the rule matches.
	PerRule RateLimitPer = iota
	// PerSource keeps one bucket per source address or network.
	PerSource
)

// DefaultMaxSources is the default size of a per-source table.
const DefaultMaxSources = 1 << 20

// ErrRateLimit is wrapped by errors about ratelimit parameters.
var ErrRateLimit = errors.New("bad ratelimit")

// ParseRateLimit makes a RateLimit from a rule's rate, burst and per
// fields. per is "rule", "source" (IPv4 /32, IPv6 /128), or "source/24" or
// "source/64" (both IPv4 /24 and IPv6 /64: a customer network of each
// family); "" means "rule".
func ParseRateLimit(rate, burst uint64, per string) (RateLimit, error) {
	rl := RateLimit{Rate: rate, Burst: burst}
	switch per {
	case "", "rule":
		rl.Per = PerRule
	case "source":
		rl.Per, rl.Prefix4, rl.Prefix6 = PerSource, 32, 128
	case "source/24", "source/64":
		rl.Per, rl.Prefix4, rl.Prefix6 = PerSource, 24, 64
	default:
		return rl, fmt.Errorf("%w: per %q: want rule, source, source/24 or source/64", ErrRateLimit, per)
	}
	return rl, rl.Validate()
}

// Validate reports what is wrong with rl, if anything.
func (rl RateLimit) Validate() error {
	switch {
	case rl.Rate == 0:
		return fmt.Errorf("%w: rate 0: want at least 1 packet a second", ErrRateLimit)
	case rl.Rate > 1e9:
		return fmt.Errorf("%w: rate %d: at most 1e9 packets a second", ErrRateLimit, rl.Rate)
	case rl.Burst > 1e9:
		return fmt.Errorf("%w: burst %d: at most 1e9 packets", ErrRateLimit, rl.Burst)
	case rl.Per == PerSource && (rl.Prefix4 < 1 || rl.Prefix4 > 32 || rl.Prefix6 < 1 || rl.Prefix6 > 128):
		return fmt.Errorf("%w: prefixes /%d and /%d: want 1-32 and 1-128", ErrRateLimit, rl.Prefix4, rl.Prefix6)
	case rl.Per != PerRule && rl.Per != PerSource:
		return fmt.Errorf("%w: per %d", ErrRateLimit, rl.Per)
	}
	return nil
}

// String returns rl as a rule would write it.
func (rl RateLimit) String() string {
	per := "rule"
	if rl.Per == PerSource {
		per = "source"
		if rl.Prefix4 != 32 || rl.Prefix6 != 128 {
			per = fmt.Sprintf("source (IPv4 /%d, IPv6 /%d)", rl.Prefix4, rl.Prefix6)
		}
	}
	return fmt.Sprintf("rate %d/s burst %d per %s", rl.Rate, max(rl.Burst, 1), per)
}

// ratelimitMapName is the name of rule i's bucket map.
func ratelimitMapName(i int) string { return fmt.Sprintf("l4drop_rl_%d", i) }

// ratelimitC is the C every ratelimit rule shares, written once after the
// prelude and the maps (it reads l4drop_cfg's seed):
//
//	static __always_inline int l4_rl_take(__u64 *tat, __u64 now, __u64 t, __u64 tau);
//	static __always_inline int l4_rl_source(void *map, __u32 mask, const uint8_t *ip, const uint8_t *end, int fam,
//						 __u32 m4, __u32 m6a, __u32 m6b, __u32 m6c, __u32 m6d, __u64 t, __u64 tau);
//	static __always_inline int l4_rl_rule(void *map, __u64 t, __u64 tau);
//
// which return 1 when the packet is within the limit and 0 when it is over.
const ratelimitC = `
/* The ratelimit action: see RateLimit in ratelimit.go. */

/*
 * A bucket's theoretical arrival time, in 1/16 ns of bpf_ktime_get_ns: the
 * interval between tokens is exact to 0.1 % up to 60 Mpps, and the clock
 * wraps after 36 years.
 */
struct l4_rl_bucket {
	__u64 tat;
};

/*
 * Per source, a bucket is a way of a set of four in an array: the set is
 * chosen by a keyed hash of the source, the way by the whole hash (its
 * tag), so that a packet costs one line of memory where an LRU hash's
 * bucket, node and key cost several cache misses at a million sources. An
 * empty way (tag 0, tat 0) is a full bucket: a new source finds one in it,
 * and so does the source whose hash is 0.
 */
struct l4_rl_way {
	__u64 tag;
	__u64 tat;
};

struct l4_rl_set {
	struct l4_rl_way w[4];
};

/*
 * l4_rl_take lets a packet through a bucket that emits one token every t ns
 * and holds tau/t of them (GCRA): it conforms if the bucket, its arrival
 * time moved on by t, is not more than tau ahead of now. Several CPUs may
 * share the bucket: a lost race is retried, and after a few the packet
 * counts as over the limit, since the others took the tokens.
 */
static __always_inline int l4_rl_take(__u64 *tat, __u64 now, __u64 t, __u64 tau)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u64 old = *(volatile __u64 *)tat;
		__u64 base = old > now ? old : now;
		if (base + t - now > tau)
			return 0;
		if (__sync_val_compare_and_swap(tat, old, base + t) == old)
			return 1;
	}
	return 0;
}

static __always_inline int l4_rl_rule(void *map, __u64 t, __u64 tau)
{
	__u32 zero = 0;
	struct l4_rl_bucket *b = bpf_map_lookup_elem(map, &zero);
	if (!b)
		return 1;
	return l4_rl_take(&b->tat, bpf_ktime_get_ns() << 4, t, tau);
}

/*
 * l4_rl_source finds the bucket of the packet's source address masked with
 * m4 (IPv4) or m6a-d (IPv6, 32 bits each, network order) in map, an array
 * of mask + 1 sets, making it when new, and takes a token from it. The hash
 * is keyed by the loader's seed, so that nobody can pick sources that share
 * a set or a tag with another's: an IPv4 source's tag is a bijection of its
 * address, shared with no other IPv4 source; an IPv6 source's is 64 bits of
 * its 128. A new source takes the way whose bucket is fullest (the lowest
 * arrival time): one that nobody is limited by now, if any. Ways are written
 * without a lock: two CPUs making two sources in one set at once may leave
 * one of them with the other's arrival time, an error of a burst at most.
 */
static __always_inline int l4_rl_source(void *map, __u32 mask, const uint8_t *ip, const uint8_t *end, int fam,
					 __u32 m4, __u32 m6a, __u32 m6b, __u32 m6c, __u32 m6d, __u64 t, __u64 tau)
{
	__u64 seed = ((volatile struct l4_config *)&l4drop_cfg)->seed;
	__u64 h;
	if (fam == 4) {
		if (ip + 20 > end)
			return 1;
		h = l4_mix64((__u64)(*(const __u32 *)(ip + 12) & m4) ^ seed);
	} else {
		if (ip + 40 > end)
			return 1;
		__u64 hi = (__u64)(*(const __u32 *)(ip + 8) & m6a) << 32 | (*(const __u32 *)(ip + 12) & m6b);
		__u64 lo = (__u64)(*(const __u32 *)(ip + 16) & m6c) << 32 | (*(const __u32 *)(ip + 20) & m6d);
		h = l4_mix64(l4_mix64(hi ^ ~seed) ^ lo);
	}
	__u32 i = (__u32)(h >> 32) & mask;
	struct l4_rl_set *s = bpf_map_lookup_elem(map, &i);
	if (!s)
		return 1;
	__u64 now = bpf_ktime_get_ns() << 4;
	__u64 low = s->w[0].tat;
	__u32 victim = 0;
#pragma unroll
	for (int k = 0; k < 4; k++) {
		if (s->w[k].tag == h)
			return l4_rl_take(&s->w[k].tat, now, t, tau);
		if (s->w[k].tat < low) {
			low = s->w[k].tat;
			victim = k;
		}
	}
	/* A new source: its bucket is full, this packet takes a token. */
	struct l4_rl_way *v = &s->w[victim & 3];
	v->tag = h;
	v->tat = now + t;
	return 1;
}
`

// ratelimitByteOrder defines l4_rl_be32 for ratelimitC; it is separate so
// that ratelimitC does not depend on the syncookie action's macros.
const ratelimitByteOrder = `
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define l4_rl_be32(x) __builtin_bswap32(x)
#else
#define l4_rl_be32(x) (x)
#endif
`

// ratelimitSupportC returns the shared C of the ratelimit action.
func ratelimitSupportC() string { return ratelimitByteOrder + ratelimitC }

// ratelimitMapC returns the definition of rule i's bucket map.
func ratelimitMapC(i int, rl RateLimit) string {
	if rl.Per == PerRule {
		return fmt.Sprintf(`
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l4_rl_bucket);
} %s SEC(".maps");
`, ratelimitMapName(i))
	}
	return fmt.Sprintf(`
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	/* Mappable: then the values start on a page, and a set is one line. */
	__uint(map_flags, 1024 /* BPF_F_MMAPABLE */);
	__uint(max_entries, %d);
	__type(key, __u32);
	__type(value, struct l4_rl_set);
} %s SEC(".maps");
`, rl.sets(), ratelimitMapName(i))
}

// sets returns the number of sets of a per-source table: a power of two,
// twice MaxSources ways, 4 a set.
func (rl RateLimit) sets() int {
	n := rl.MaxSources
	if n == 0 {
		n = DefaultMaxSources
	}
	sets := 1
	for sets*4 < 2*int(n) {
		sets *= 2
	}
	return sets
}

// ratelimitCall returns a C expression, 1 when the packet is within rule
// i's limit and 0 when it is over: what the generator tests before it drops.
// ip, end and fam are the names of the packet's IP header, end and family
// (4 or 6) in the calling C.
func ratelimitCall(i int, rl RateLimit, ip, end, fam string) string {
	t, tau := rl.interval()
	if rl.Per == PerRule {
		return fmt.Sprintf("l4_rl_rule(&%s, %dULL, %dULL)", ratelimitMapName(i), t, tau)
	}
	m6 := prefixMask(rl.Prefix6, 128)
	var w [4]uint32
	for j := range w {
		w[j] = uint32(m6[4*j])<<24 | uint32(m6[4*j+1])<<16 | uint32(m6[4*j+2])<<8 | uint32(m6[4*j+3])
	}
	m4 := prefixMask(rl.Prefix4, 32)
	word4 := uint32(m4[0])<<24 | uint32(m4[1])<<16 | uint32(m4[2])<<8 | uint32(m4[3])
	args := []string{fmt.Sprintf("l4_rl_be32(%#xu)", word4)}
	for _, x := range w {
		args = append(args, fmt.Sprintf("l4_rl_be32(%#xu)", x))
	}
	return fmt.Sprintf("l4_rl_source(&%s, %#xu, %s, %s, %s, %s, %dULL, %dULL)",
		ratelimitMapName(i), rl.sets()-1, ip, end, fam, strings.Join(args, ", "), t, tau)
}

// interval returns the time between tokens and the bucket's depth, in the
// C's unit of 1/16 ns.
func (rl RateLimit) interval() (t, tau uint64) {
	t = max(uint64(16e9)/max(rl.Rate, 1), 1)
	return t, t * max(rl.Burst, 1)
}

// prefixMask returns the mask of a prefix of n bits in an address of bits
// bits.
func prefixMask(n, bits int) []byte {
	m := make([]byte, bits/8)
	for i := range m {
		switch {
		case n >= 8*(i+1):
			m[i] = 0xff
		case n > 8*i:
			m[i] = byte(0xff << (8*(i+1) - n))
		}
	}
	return m
}
