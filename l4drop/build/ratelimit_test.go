package build

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/splitmix"
)

func TestRatelimitParse(t *testing.T) {
	for _, tc := range []struct {
		rate, burst uint64
		per         string
		want        RateLimit
		err         bool
	}{
		{rate: 100, burst: 10, per: "", want: RateLimit{Rate: 100, Burst: 10, Per: PerRule}},
		{rate: 100, per: "rule", want: RateLimit{Rate: 100, Per: PerRule}},
		{rate: 5, burst: 1, per: "source", want: RateLimit{Rate: 5, Burst: 1, Per: PerSource, Prefix4: 32, Prefix6: 128}},
		{rate: 5, per: "source/24", want: RateLimit{Rate: 5, Per: PerSource, Prefix4: 24, Prefix6: 64}},
		{rate: 5, per: "source/64", want: RateLimit{Rate: 5, Per: PerSource, Prefix4: 24, Prefix6: 64}},
		{rate: 0, per: "rule", err: true},
		{rate: 2e9, per: "rule", err: true},
		{rate: 10, burst: 2e9, per: "rule", err: true},
		{rate: 10, per: "source/16", err: true},
		{rate: 10, per: "destination", err: true},
	} {
		got, err := ParseRateLimit(tc.rate, tc.burst, tc.per)
		if tc.err {
			if !errors.Is(err, ErrRateLimit) {
				t.Errorf("ParseRateLimit(%d, %d, %q): error %v, want ErrRateLimit", tc.rate, tc.burst, tc.per, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRateLimit(%d, %d, %q) = %+v, %v; want %+v", tc.rate, tc.burst, tc.per, got, err, tc.want)
		}
	}
	if err := (RateLimit{Rate: 1, Per: PerSource, Prefix4: 33, Prefix6: 64}).Validate(); !errors.Is(err, ErrRateLimit) {
		t.Errorf("prefix /33 accepted: %v", err)
	}
}

func TestRatelimitPrefixMask(t *testing.T) {
	for _, tc := range []struct {
		n, bits int
		want    string
	}{
		{32, 32, "ffffffff"},
		{24, 32, "ffffff00"},
		{1, 32, "80000000"},
		{20, 32, "fffff000"},
		{64, 128, "ffffffffffffffff0000000000000000"},
		{128, 128, "ffffffffffffffffffffffffffffffff"},
	} {
		if got := fmt.Sprintf("%x", prefixMask(tc.n, tc.bits)); got != tc.want {
			t.Errorf("prefixMask(%d, %d) = %s, want %s", tc.n, tc.bits, got, tc.want)
		}
	}
}

// ratelimitMain applies rule 0's limit to every IP packet.
const ratelimitMain = `
SEC("xdp")
int l4t_ratelimit(struct xdp_md *ctx)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	const uint8_t *ip = data;
	int fam = l4_parse(data, end, &ip);
	if (!fam)
		return XDP_PASS;
	return %s ? XDP_PASS : XDP_DROP;
}
`

// ratelimitTestPrelude is what a generated program has before the actions'
// C: the per-source buckets read the seed in l4drop_cfg (0 here).
func ratelimitTestPrelude() string {
	return prelude + embeddedXdpcapHeader() + "\n" + fmt.Sprintf(mapsTemplate, 1, 1, 1)
}

func ratelimitProgram(tb testing.TB, rl RateLimit) *ebpf.Program {
	tb.Helper()
	fixture.RequireRoot(tb)
	if err := rl.Validate(); err != nil {
		tb.Fatal(err)
	}
	src := ratelimitTestPrelude() + ratelimitSupportC() + ratelimitMapC(0, rl) +
		fmt.Sprintf(ratelimitMain, ratelimitCall(0, rl, "ip", "end", "fam"))
	return loadTestC(tb, src).Programs["l4t_ratelimit"]
}

// TestRatelimitHolds sends packets from several sources, far faster than
// the limit, for about a second, and checks what each bucket passes is
// within 5 % of rate × time + burst, time running from a bucket's first
// packet to its last (checkBucket: applied packet by packet, for the
// pauses a loaded machine makes).
func TestRatelimitHolds(t *testing.T) {
	r := fixture.NewXDPRunner(t)
	const rate, burst = 300, 40
	v4 := func(src string) []byte { return fixture.UDP4(src, fixture.ServerIPv4, 1000, 53, []byte("x")) }
	v6 := func(src string) []byte { return fixture.UDP6(src, fixture.ServerIPv6, 1000, 53, []byte("x")) }
	type source struct {
		frame  []byte
		bucket int
	}
	tests := []struct {
		per     string
		sources []source
		buckets int
	}{
		{"rule", []source{{v4("198.18.1.1"), 0}, {v4("198.18.2.1"), 0}, {v6("fd00::1"), 0}}, 1},
		{"source", []source{{v4("198.18.1.1"), 0}, {v4("198.18.1.2"), 1}, {v6("fd00::1"), 2}, {v6("fd00::2"), 3}}, 4},
		{"source/24", []source{{v4("198.18.1.1"), 0}, {v4("198.18.1.200"), 0}, {v4("198.18.2.1"), 1},
			{v6("fd00:0:0:1::1"), 2}, {v6("fd00:0:0:1:ffff::9"), 2}, {v6("fd00:0:0:2::1"), 3}}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.per, func(t *testing.T) {
			rl, err := ParseRateLimit(rate, burst, tc.per)
			if err != nil {
				t.Fatal(err)
			}
			prog := ratelimitProgram(t, rl)
			// The first run of a program attaches things (a synchronize_rcu,
			// tens of ms): not part of any bucket's time.
			if _, err := r.Run(prog, append(make([]byte, 12), 0x88, 0xb5, 0, 0)); err != nil { // not IP
				t.Fatal(err)
			}
			passed := make([]int, tc.buckets)
			times := make([][]time.Time, tc.buckets)
			start := time.Now()
			for time.Since(start) < time.Second {
				for _, s := range tc.sources {
					before := time.Now()
					ret, err := r.Run(prog, s.frame)
					if err != nil {
						t.Fatal(err)
					}
					// The kernel ran it between before and after.
					after := time.Now()
					times[s.bucket] = append(times[s.bucket], before.Add(after.Sub(before)/2))
					if ret == 2 {
						passed[s.bucket]++
					}
				}
			}
			for b := range passed {
				checkBucket(t, b, passed[b], times[b], rate, burst)
			}
		})
	}
}

// rlSet4 is the set of the per-source table (sets of them) an IPv4
// source falls in with the seed of a program loaded without the loader
// (0): the hash is of the address in network order, as the program loads
// it on a little-endian machine.
func rlSet4(addr netip.Addr, sets int) uint32 {
	a := addr.As4()
	word := uint64(a[0]) | uint64(a[1])<<8 | uint64(a[2])<<16 | uint64(a[3])<<24
	// l4_mix64 is splitmix.Mix without its step.
	return uint32(splitmix.Mix(word-0x9e3779b97f4a7c15)>>32) & uint32(sets-1)
}

// TestRatelimitSetEviction fills one set of the per-source table with four
// sources, one of them over its limit, and sends a fifth: it takes the way
// of the source with the fullest bucket, so the one over its limit stays
// over it, and the source displaced starts again with a full burst.
func TestRatelimitSetEviction(t *testing.T) {
	r := fixture.NewXDPRunner(t)
	rl, err := ParseRateLimit(1, 5, "source")
	if err != nil {
		t.Fatal(err)
	}
	sets := rl.sets()
	// Five sources of one set, found by the program's own hash.
	base := netip.MustParseAddr("198.18.0.1")
	var srcs []netip.Addr
	want := rlSet4(base, sets)
	for a := base; len(srcs) < 5; a = a.Next() {
		if rlSet4(a, sets) == want {
			srcs = append(srcs, a)
		}
	}
	prog := ratelimitProgram(t, rl)
	send := func(src netip.Addr) bool {
		t.Helper()
		ret, err := r.Run(prog, fixture.UDP4(src.String(), fixture.ServerIPv4, 1000, 53, []byte("x")))
		if err != nil {
			t.Fatal(err)
		}
		return ret == 2 // XDP_PASS: within the limit
	}
	// srcs[0] spends its burst and goes over its limit; the three others
	// take one token each (in the 5 s its burst lasts at 1 a second, none
	// of this can refill a bucket).
	for i := range 5 {
		if !send(srcs[0]) {
			t.Fatalf("packet %d of %s dropped within its burst", i, srcs[0])
		}
	}
	if send(srcs[0]) {
		t.Fatalf("%s passed over its limit", srcs[0])
	}
	for _, s := range srcs[1:4] {
		if !send(s) {
			t.Fatalf("%s's first packet dropped", s)
		}
	}
	// The fifth source takes a way: not srcs[0]'s, whose bucket is emptiest.
	if !send(srcs[4]) {
		t.Fatalf("%s's first packet dropped", srcs[4])
	}
	if send(srcs[0]) {
		t.Errorf("%s, over its limit, passed after a fifth source came to its set: its bucket was taken", srcs[0])
	}
	// srcs[1], whose token is the oldest, lost its way: it has a full
	// burst again (5 of 6 packets pass). srcs[3] kept its bucket (4 of 6).
	// srcs[3] first: srcs[1], new again, takes another's way.
	for _, c := range []struct {
		src  netip.Addr
		want int
	}{{srcs[3], 4}, {srcs[1], 5}} {
		n := 0
		for range 6 {
			if send(c.src) {
				n++
			}
		}
		if n != c.want {
			t.Errorf("%s: %d of 6 packets passed, want %d", c.src, n, c.want)
		}
	}
}

// ratelimitPerCPU is the alternative measured against the shared buckets:
// per-CPU buckets, each at rate/ncpu, updated without atomics.
const ratelimitPerCPU = `
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;

struct l4_rl_key {
	__u32 addr[4];
};

struct {
	__uint(type, 6 /* BPF_MAP_TYPE_PERCPU_ARRAY */);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l4_rl_bucket);
} l4t_pcpu_rule SEC(".maps");

struct {
	__uint(type, 10 /* BPF_MAP_TYPE_LRU_PERCPU_HASH */);
	__uint(max_entries, %[1]d);
	__type(key, struct l4_rl_key);
	__type(value, struct l4_rl_bucket);
} l4t_pcpu_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 21);
	__type(key, __u32);
	__type(value, struct l4_rl_bucket);
} l4t_slots SEC(".maps");

static __always_inline int l4t_take_local(__u64 *tat, __u64 now, __u64 t, __u64 tau)
{
	__u64 base = *tat > now ? *tat : now;
	if (base + t - now > tau)
		return 0;
	*tat = base + t;
	return 1;
}

struct {
	__uint(type, 9 /* BPF_MAP_TYPE_LRU_HASH */);
	__uint(max_entries, %[1]d);
	__type(key, struct l4_rl_key);
	__type(value, struct l4_rl_bucket);
} l4t_lru_src SEC(".maps");

/*
 * Per-source buckets in an LRU hash: shared (CAS), as they were before the
 * set table, or per CPU.
 */
static __always_inline int l4t_lru_source(void *map, int shared, const uint8_t *ip, __u64 t, __u64 tau)
{
	struct l4_rl_key k = {};
	k.addr[2] = l4_rl_be32(0xffff);
	k.addr[3] = *(const __u32 *)(ip + 12);
	__u64 now = bpf_ktime_get_ns() << 4;
	struct l4_rl_bucket *b = bpf_map_lookup_elem(map, &k);
	if (!b) {
		struct l4_rl_bucket nb = { .tat = now + t };
		bpf_map_update_elem(map, &k, &nb, 1 /* BPF_NOEXIST */);
		return 1;
	}
	return shared ? l4_rl_take(&b->tat, now, t, tau) : l4t_take_local(&b->tat, now, t, tau);
}

/* Variants by L4T_MODE: 0 parse and drop, 1 shared rule bucket, 2 per-CPU
 * rule bucket, 3 shared per-source (the set table), 4 per-CPU per-source in
 * an LRU hash, 5 a plain array of shared buckets indexed by a hash of the
 * source (collisions share a limit), the floor of a table lookup, 6 shared
 * per-source in an LRU hash (what the set table replaced); with L4T_RANDOM the source address is random
 * among 2^20 instead of the packet's. */
SEC("xdp")
int l4t_cost(struct xdp_md *ctx)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	const uint8_t *ip = data;
	int fam = l4_parse(data, end, &ip);
	if (fam != 4)
		return XDP_PASS;
	uint8_t fake[20] = {};
	if (L4T_RANDOM) {
		*(__u32 *)(fake + 12) = bpf_get_prandom_u32() & 0xfffff;
		ip = fake;
		end = fake + 20;
	}
	int ok = 1;
	if (L4T_MODE == 1)
		ok = l4_rl_rule(&l4drop_rl_0, %[2]dULL, %[3]dULL);
	else if (L4T_MODE == 2) {
		__u32 zero = 0;
		struct l4_rl_bucket *b = bpf_map_lookup_elem(&l4t_pcpu_rule, &zero);
		ok = b ? l4t_take_local(&b->tat, bpf_ktime_get_ns() << 4, %[2]dULL, %[3]dULL) : 1;
	} else if (L4T_MODE == 3)
		ok = l4_rl_source(&l4drop_rl_1, %[4]du, ip, end, 4, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, %[2]dULL, %[3]dULL);
	else if (L4T_MODE == 4 && ip + 20 <= end)
		ok = l4t_lru_source(&l4t_pcpu_src, 0, ip, %[2]dULL, %[3]dULL);
	else if (L4T_MODE == 5 && ip + 20 <= end) {
		__u32 h = (*(const __u32 *)(ip + 12) * 0x9e3779b1u) >> 11;
		struct l4_rl_bucket *b = bpf_map_lookup_elem(&l4t_slots, &h);
		ok = b ? l4_rl_take(&b->tat, bpf_ktime_get_ns() << 4, %[2]dULL, %[3]dULL) : 1;
	} else if (L4T_MODE == 6 && ip + 20 <= end)
		ok = l4t_lru_source(&l4t_lru_src, 1, ip, %[2]dULL, %[3]dULL);
	return ok ? XDP_DROP : XDP_ABORTED;
}
`

// TestRatelimitCost measures the cost per packet of shared and per-CPU
// buckets with BPF_PROG_TEST_RUN, one CPU and two at once, against parse
// and drop. Figures are indicative (a shared machine); nothing is asserted
// about them, only that every variant runs.
func TestRatelimitCost(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	fixture.RequireRoot(t)
	// A limit every packet stays within: the path that takes a token.
	rl := RateLimit{Rate: 1e9, Burst: 1e9 / 16, Per: PerSource, Prefix4: 32, Prefix6: 128}
	tt, tau := rl.interval()
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1000, 53, []byte("x"))
	const n = 1 << 18
	progs := map[[2]int]*ebpf.Program{}
	run := func(mode int, random bool, cpus int) float64 {
		rnd := 0
		if random {
			rnd = 1
		}
		prog := progs[[2]int{mode, rnd}]
		if prog == nil {
			src := fmt.Sprintf("#define L4T_MODE %d\n#define L4T_RANDOM %d\n", mode, rnd) + ratelimitTestPrelude() + ratelimitSupportC() +
				ratelimitMapC(0, RateLimit{Per: PerRule}) + ratelimitMapC(1, rl) + fmt.Sprintf(ratelimitPerCPU, DefaultMaxSources, tt, tau, rl.sets()-1)
			prog = loadTestC(t, src).Programs["l4t_cost"]
			progs[[2]int{mode, rnd}] = prog
			// Fill the tables first, so that random sources measure
			// lookups in a full table, as a flood from 2^20 sources would.
			if random {
				if _, _, err := prog.Benchmark(pkt, DefaultMaxSources, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
		var wg sync.WaitGroup
		ns := make([]float64, cpus)
		for c := range cpus {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				ret, d, err := prog.Benchmark(pkt, n, nil)
				if err != nil || ret != 1 {
					t.Errorf("mode %d: ret %d, %v", mode, ret, err)
				}
				ns[c] = float64(d.Nanoseconds())
			}()
		}
		wg.Wait()
		var sum float64
		for _, v := range ns {
			sum += v
		}
		return sum / float64(cpus)
	}
	for _, cpus := range []int{1, 2} {
		base := run(0, false, cpus)
		t.Logf("%d CPU(s) at once: parse+drop %.1f ns/packet", cpus, base)
		for _, v := range []struct {
			name   string
			mode   int
			random bool
		}{
			{"rule, shared (CAS)", 1, false},
			{"rule, per CPU", 2, false},
			{"source, shared, one source", 3, false},
			{"source, per CPU, one source", 4, false},
			{"source, shared, 2^20 sources", 3, true},
			{"source, shared LRU hash (before), 2^20 sources", 6, true},
			{"source, per CPU, 2^20 sources", 4, true},
			{"2^21 hashed slots, one way each, 2^20 sources", 5, true},
		} {
			d := run(v.mode, v.random, cpus)
			t.Logf("%d CPU(s) at once: %-48s %6.1f ns/packet (+%.1f)", cpus, v.name, d, d-base)
		}
	}
}
