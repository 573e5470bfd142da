package build

import (
	"fmt"

	"github.com/l4drop/l4drop/l4drop"
)

// SyncookieOptions tune the SYN-ACKs the syncookie action sends.
//
// The action answers a TCP SYN in XDP with a SYN-ACK whose sequence number is
// a SYN cookie made by the kernel's own cookie function
// (bpf_tcp_raw_gen_syncookie_ipv4/6), so that no state is kept for it. The
// client's ACK comes back to the same rule: it passes to the stack when its
// cookie checks (bpf_tcp_raw_check_syncookie_ipv4/6) or when the kernel knows
// its connection already (bpf_skc_lookup_tcp); anything else the rule
// matched is dropped.
//
// The handoff to the stack is the kernel's own cookie check: the listener
// turns a valid cookie ACK into a connection exactly as if it had sent the
// SYN-ACK itself. The kernel checks cookies only on a listener that answered
// a SYN with a cookie in the last two minutes (tcp_synq_no_recent_overflow),
// so the action hands one SYN per destination address and port and per
// second to the stack, and the namespace of the interface must run with:
//
//	net.ipv4.tcp_syncookies = 2   (every SYN the stack sees gets a cookie, and arms the check)
//	net.ipv4.tcp_timestamps = 2   (timestamps without a per-connection offset)
//
// Both sysctls are per network namespace and also cover IPv6. The second is
// needed because the kernel subtracts its per-connection timestamp offset,
// a secret, from the echoed TSval before it decodes the window scale and
// SACK bits stored there; with tcp_timestamps=2 that offset is 0. The loader
// sets both in the interface's namespace and restores the old values on
// unload. net.ipv4.tcp_sack and tcp_window_scaling must stay on (their
// defaults): the kernel refuses cookies that encode an option it has off.
//
// What the SYN-ACK carries follows the kernel's cookie SYN-ACK: with a TCP
// timestamp in the SYN, MSS, SACK permitted (if the SYN had it), the
// timestamp (TSval is the kernel's millisecond TCP clock with the client's
// window scale and SACK in its low 6 bits, TSecr the client's TSval) and
// window scale (if the SYN had it); without one, the MSS alone, since the
// kernel then cannot recover any option from the ACK. ECN is never offered.
// SYNs carrying IPv4 options or IPv6 extension headers are dropped, as is any
// data a SYN carries.
type SyncookieOptions struct {
	// MSS4 and MSS6 are the MSS the SYN-ACK announces over IPv4 and IPv6;
	// 0 means 1460 and 1440 (a 1500-byte MTU).
	MSS4, MSS6 uint16
	// WScale is the window scale the SYN-ACK announces. It must be what
	// the kernel picks when it accepts the cookie; SyncookieWScale computes
	// it from the namespace's sysctls. 0 means 7, the kernel's choice with
	// default sysctls.
	WScale uint8
	// Window is the SYN-ACK's (unscaled) window; 0 means 64240.
	Window uint16
}

// SyncookieWScale returns the window scale the kernel gives a connection it
// accepts from a cookie: enough to announce the largest receive buffer,
// max(net.ipv4.tcp_rmem[2], net.core.rmem_max), as tcp_select_initial_window
// does.
func SyncookieWScale(tcpRmemMax, coreRmemMax uint32) uint8 {
	return l4drop.SyncookieWScale(tcpRmemMax, coreRmemMax)
}

// Syncookie outcomes, as l4_syncookie returns them: the generator counts
// them (syncookie_sent is SyncookieSent, syncookie_ok SyncookieOK,
// syncookie_bad SyncookieBad) and maps them to an XDP action with
// l4_syncookie_action.
const (
	SyncookieSent   = 0 // SYN answered with a cookie SYN-ACK: XDP_TX
	SyncookieArmed  = 1 // SYN handed to the stack, to keep its cookie check armed: XDP_PASS
	SyncookieOK     = 2 // ACK with a valid cookie: XDP_PASS
	SyncookieKnown  = 3 // packet (SYN too) of a connection the kernel knows: XDP_PASS
	SyncookieBad    = 4 // ACK with an invalid cookie: XDP_DROP
	SyncookieDrop   = 5 // anything else the rule matched: XDP_DROP
	SyncookieErr    = 6 // a SYN that could not be answered (resize failed, odd headers): XDP_DROP
	syncookieCodes  = 7
	syncookieMapKey = "l4drop_sc_armed"
)

// syncookieArmedSlots is the size of the table that remembers when a SYN to
// a destination address and port was last handed to the stack: 65536 slots
// of 4 bytes, 256 KiB. Two destinations sharing a slot take turns.
const syncookieArmedSlots = 65536

// syncookieC returns the C of the syncookie action, to be written once after
// the prelude and before the rules: the helpers it needs, declared by number
// (the prelude's style), its map, and
//
//	static __always_inline __u32 l4_syncookie(struct xdp_md *ctx, __u64 ip_off, int fam);
//	static __always_inline __u32 l4_syncookie_action(__u32 outcome);
//
// l4_syncookie takes the offset of the IP header in the frame and the family
// l4_parse found (4 or 6) and returns one of the Syncookie outcomes. It may
// resize the frame (bpf_xdp_adjust_tail), which invalidates every packet
// pointer the caller holds: the caller reloads ctx->data and ctx->data_end
// afterwards. An XDP_TX outcome must leave through l4_finish's TX path (the
// xdpcap hook with action XDP_TX), not the pass path.
func syncookieC(opts SyncookieOptions) string {
	if opts.MSS4 == 0 {
		opts.MSS4 = 1460
	}
	if opts.MSS6 == 0 {
		opts.MSS6 = 1440
	}
	if opts.WScale == 0 {
		opts.WScale = 7
	}
	opts.WScale = min(opts.WScale, 14)
	if opts.Window == 0 {
		opts.Window = 64240
	}
	return fmt.Sprintf("\n#ifndef L4_SC_MSS4\n#define L4_SC_MSS4 %d\n#define L4_SC_MSS6 %d\n#define L4_SC_WSCALE %d\n#endif\n#define L4_SC_WINDOW %d\n#define L4_SC_SLOTS %d\n",
		opts.MSS4, opts.MSS6, opts.WScale, opts.Window, syncookieArmedSlots) + syncookieTemplate
}

// syncookieGenC is the syncookie action's C in generated programs: the
// MSS and window scale are constants the loader writes (as it writes the
// rules' switches) from the interface's MTU and its namespace's sysctls,
// since the window scale must be what that kernel picks when it accepts
// the cookie, which the build machine cannot know.
func syncookieGenC() string {
	return fmt.Sprintf(`
#define L4_LOADCONST(sym) ({ uint64_t v_; asm volatile("%%0 = " #sym " ll" : "=r"(v_)); v_; })
#define L4_SC_MSS4 ((uint16_t)L4_LOADCONST(%s))
#define L4_SC_MSS6 ((uint16_t)L4_LOADCONST(%s))
#define L4_SC_WSCALE ((uint8_t)L4_LOADCONST(%s))
`, l4drop.SymSyncookieMSS4, l4drop.SymSyncookieMSS6, l4drop.SymSyncookieWScale) + syncookieC(SyncookieOptions{}) + syncookieGlobalC
}

// syncookieGlobalC wraps l4_syncookie in a global function, which the
// verifier checks once: inlined in a program's main function, its code
// would be walked again for every rule block and set that can match,
// past the verifier's limit in rule sets of thousands of rules.
const syncookieGlobalC = `
__attribute__((noinline)) __u32 l4_sc_global(struct xdp_md *ctx, __u32 ip_off, __u32 fam)
{
	return l4_syncookie(ctx, ip_off, (int)fam);
}
`

// syncookieCall returns the C statement that applies the syncookie action to
// the packet in ctx: it sets outcome (a __u32 variable) and action, and
// reloads data and end, which the action may have moved.
func syncookieCall(ctx, data, end, ip, fam, outcome, action string) string {
	return fmt.Sprintf("%[6]s = l4_syncookie(%[1]s, (__u64)(%[4]s - %[2]s), %[5]s);\n"+
		"%[7]s = l4_syncookie_action(%[6]s);\n"+
		"%[2]s = (const uint8_t *)(long)%[1]s->data;\n"+
		"%[3]s = (const uint8_t *)(long)%[1]s->data_end;\n",
		ctx, data, end, ip, fam, outcome, action)
}

const syncookieTemplate = `
/* The syncookie action: see SyncookieOptions in syncookie.go. */
static long (*bpf_xdp_adjust_tail)(struct xdp_md *ctx, int delta) = (void *)65;
static long (*bpf_sk_release)(void *sk) = (void *)86;
static long (*bpf_loop)(__u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags) = (void *)181;
static long (*bpf_xdp_load_bytes)(struct xdp_md *ctx, __u32 offset, void *buf, __u32 len) = (void *)189;
static void *(*bpf_skc_lookup_tcp)(void *ctx, void *tuple, __u32 tuple_size, __u64 netns, __u64 flags) = (void *)99;
static long long (*bpf_tcp_raw_gen_syncookie_ipv4)(void *iph, void *th, __u32 th_len) = (void *)204;
static long long (*bpf_tcp_raw_gen_syncookie_ipv6)(void *iph, void *th, __u32 th_len) = (void *)205;
static long (*bpf_tcp_raw_check_syncookie_ipv4)(void *iph, void *th) = (void *)206;
static long (*bpf_tcp_raw_check_syncookie_ipv6)(void *iph, void *th) = (void *)207;

#define L4_SC_SENT 0
#define L4_SC_ARMED 1
#define L4_SC_OK 2
#define L4_SC_KNOWN 3
#define L4_SC_BAD 4
#define L4_SC_DROP 5
#define L4_SC_ERR 6

#define L4_TCP_FIN 0x01
#define L4_TCP_SYN 0x02
#define L4_TCP_RST 0x04
#define L4_TCP_ACK 0x10

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define l4_be16(x) __builtin_bswap16(x)
#define l4_be32(x) __builtin_bswap32(x)
#define l4_be64(x) __builtin_bswap64(x)
#else
#define l4_be16(x) (x)
#define l4_be32(x) (x)
#define l4_be64(x) (x)
#endif

/* The MSS of a SYN without the option: RFC 9293's default, as the kernel takes it. */
#define L4_SC_MSS_DEFAULT 536

/*
 * When a SYN to a destination (address and port, hashed) was last handed to
 * the stack, in units of 2^20 ns: the kernel checks cookies only on a
 * listener that sent one in the last two minutes, so one SYN a second goes
 * up to keep it so.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L4_SC_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} l4drop_sc_armed SEC(".maps");

/* What a SYN's options say, as the SYN-ACK and the cookie need it. */
struct l4_sc_syn {
	__u32 tsval;
	uint16_t mss;
	uint8_t ts, sack, ws, wscale;
};

/* struct bpf_sock_tuple, for either family. */
struct l4_sc_tuple {
	__u32 saddr[4];
	__u32 daddr[4];
	uint16_t sport, dport;
};

static __always_inline __u32 l4_syncookie_action(__u32 outcome)
{
	if (outcome == L4_SC_SENT)
		return XDP_TX;
	if (outcome <= L4_SC_KNOWN)
		return XDP_PASS;
	return XDP_DROP;
}

static __always_inline uint16_t l4_sc_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

/*
 * l4_sc_put writes the 32-bit word v at p and adds it to the checksum sum
 * *s: folded, 32-bit words sum to what their 16-bit halves do, and a
 * header summed as it is written is not read back, which costs a stall
 * where the loads span smaller stores just made.
 */
static __always_inline void l4_sc_put(uint8_t *p, __u32 v, __u64 *s)
{
	*(__u32 *)p = v;
	*s += v;
}

/* The state of an option walk: the options copied from the packet, where the walk is, what it found. */
struct l4_sc_walk {
	uint8_t buf[64];
	__u32 off, olen;
	struct l4_sc_syn o;
};

/*
 * l4_sc_option reads one option: a bpf_loop callback, since a loop the
 * verifier walks itself is explored once for every layout of options.
 */
static long l4_sc_option(__u32 i, void *ctx)
{
	struct l4_sc_walk *w = ctx;
	__u32 off = w->off;
	if (off >= w->olen || off >= 40)
		return 1;
	uint8_t kind = w->buf[off & 63];
	if (kind == 0)
		return 1;
	if (kind == 1) {
		w->off = off + 1;
		return 0;
	}
	uint8_t len = w->buf[(off + 1) & 63];
	if (len < 2 || off + len > w->olen)
		return 1;
	if (kind == 2 && len == 4)
		w->o.mss = (uint16_t)(w->buf[(off + 2) & 63] << 8 | w->buf[(off + 3) & 63]);
	else if (kind == 3 && len == 3) {
		uint8_t ws = w->buf[(off + 2) & 63];
		w->o.ws = 1;
		w->o.wscale = ws > 14 ? 14 : ws;
	} else if (kind == 4 && len == 2)
		w->o.sack = 1;
	else if (kind == 8 && len == 10) {
		w->o.ts = 1;
		w->o.tsval = (__u32)w->buf[(off + 2) & 63] << 24 | (__u32)w->buf[(off + 3) & 63] << 16 |
			     (__u32)w->buf[(off + 4) & 63] << 8 | w->buf[(off + 5) & 63];
	}
	w->off = off + len;
	return 0;
}

/*
 * l4_sc_zero returns 0, made from v, a value the verifier does not know,
 * so that it cannot see the 0 as a constant either: added to a constant,
 * it hides that from the verifier too.
 */
static __always_inline __u32 l4_sc_zero(__u32 v)
{
	__u32 z = v;
	asm volatile("" : "+r"(z));
	return v - z;
}

/*
 * l4_sc_options reads the SYN's MSS, window scale, SACK permitted and
 * timestamp options from the olen (0 to 40) bytes at offset off of the
 * frame. One copy to the stack, and a walk whose start and findings the
 * verifier cannot see as constants: with constants it would check every
 * layout of options apart, far past its limit; without, the walk's states
 * merge.
 */
static __always_inline void l4_sc_options(struct xdp_md *ctx, __u32 off, __u32 olen, struct l4_sc_walk *w)
{
	if (olen == 0 || olen > 40)
		return;
	if (bpf_xdp_load_bytes(ctx, off, w->buf, olen))
		return;
	__u32 z = l4_sc_zero(olen);
	w->off = z;
	w->olen = olen;
	w->o.ts = z;
	w->o.sack = z;
	w->o.ws = z;
	w->o.wscale = z;
	bpf_loop(40, l4_sc_option, w, 0);
}

/*
 * l4_sc_fast reads the options of the layouts nearly every SYN has
 * straight from the packet, without the copy and the walk's calls:
 * Linux's (MSS, SACK permitted, timestamp, NOP, window scale), Windows'
 * (MSS, NOP, window scale, NOP, NOP, SACK permitted), the MSS alone, and
 * none. For these o gets what the walk would find. It returns 0 for any
 * other layout, or options past the frame's first buffer, which the walk
 * then reads. thlen is the TCP header's length, and th + 20 <= end.
 */
static __always_inline int l4_sc_fast(const uint8_t *th, const uint8_t *end, __u32 thlen, struct l4_sc_syn *o)
{
#ifdef L4_SC_NO_FAST
	return 0;
#endif
	uint8_t ts = 0, sack = 0, ws = 0, wscale = 0;
	o->mss = L4_SC_MSS_DEFAULT;
	o->tsval = 0;
	if (thlen == 40) {
		if (th + 40 > end)
			return 0;
		/* 02 04 mss:2 04 02 08 0a tsval:4 tsecr:4 01 03 03 ws */
		if ((*(const __u64 *)(th + 20) & l4_be64(0xffff0000ffffffffull)) != l4_be64(0x020400000402080aull) ||
		    (*(const __u32 *)(th + 36) & l4_be32(0xffffff00u)) != l4_be32(0x01030300u))
			return 0;
		o->mss = l4_be16(*(const uint16_t *)(th + 22));
		o->tsval = l4_be32(*(const __u32 *)(th + 28));
		wscale = th[39];
		ts = sack = ws = 1;
	} else if (thlen == 32) {
		if (th + 32 > end)
			return 0;
		/* 02 04 mss:2 01 03 03 ws 01 01 04 02 */
		if ((*(const __u64 *)(th + 20) & l4_be64(0xffff0000ffffff00ull)) != l4_be64(0x0204000001030300ull) ||
		    *(const __u32 *)(th + 28) != l4_be32(0x01010402u))
			return 0;
		o->mss = l4_be16(*(const uint16_t *)(th + 22));
		wscale = th[27];
		sack = ws = 1;
	} else if (thlen == 24) {
		if (th + 24 > end)
			return 0;
		/* 02 04 mss:2 */
		if (*(const uint16_t *)(th + 20) != l4_be16(0x0204))
			return 0;
		o->mss = l4_be16(*(const uint16_t *)(th + 22));
	} else if (thlen != 20)
		return 0;
	/*
	 * The SYN-ACK's code branches on these: as constants, the verifier
	 * would check it once per layout, apart from the walk's.
	 */
	__u32 z = l4_sc_zero(*(const __u32 *)(th + 4));
	o->ts = ts + z;
	o->sack = sack + z;
	o->ws = ws + z;
	o->wscale = wscale > 14 ? 14 : wscale;
	return 1;
}

/*
 * l4_sc_armed reports whether this SYN goes to the stack, one a second per
 * destination slot, and marks the slot if so; now_ns is bpf_ktime_get_ns().
 */
static __always_inline int l4_sc_armed(__u32 h, __u64 now_ns)
{
	__u32 key = (h * 0x9e3779b1u) >> 16;
	__u32 *last = bpf_map_lookup_elem(&l4drop_sc_armed, &key);
	if (!last)
		return 0;
	__u32 now = (__u32)(now_ns >> 20);
	if (now - *last < 1000)
		return 0;
	*last = now;
	return 1;
}

/*
 * l4_sc_tsval is the kernel's cookie TSval: the TCP clock in ms (the
 * kernel's is CLOCK_MONOTONIC too) with the options in its 6 low bits.
 */
static __always_inline __u32 l4_sc_tsval(const struct l4_sc_syn *o, __u64 now_ns)
{
	__u32 now = (__u32)(now_ns / 1000000);
	__u32 opts = o->ws ? o->wscale : 0xf;
	if (o->sack)
		opts |= 0x10;
	__u32 ts = (now & ~0x3fu) | opts;
	if (ts > now)
		ts -= 64;
	return ts;
}

/*
 * l4_sc_tcp writes the SYN-ACK's TCP header at th (tlen bytes, 24 or 40,
 * checked against the packet's end by the caller), its checksum 0, and
 * returns its sum without the pseudo header. ports is the SYN's source
 * and destination port as the packet has them.
 */
static __always_inline __u64 l4_sc_tcp(uint8_t *th, __u32 ports, __u32 cookie, __u32 ack, int tlen, uint16_t mss,
				       const struct l4_sc_syn *o, __u64 now_ns)
{
	__u64 s = 0;
	/* The ports swapped: the word's halves, in either byte order. */
	l4_sc_put(th, ports >> 16 | ports << 16, &s);
	l4_sc_put(th + 4, l4_be32(cookie), &s);
	l4_sc_put(th + 8, l4_be32(ack), &s);
	l4_sc_put(th + 12, l4_be32((__u32)(tlen / 4) << 28 | (L4_TCP_SYN | L4_TCP_ACK) << 16 | L4_SC_WINDOW), &s);
	l4_sc_put(th + 16, 0, &s); /* checksum, urgent pointer */
	l4_sc_put(th + 20, l4_be32(0x02040000 | (__u32)mss), &s);
	if (tlen == 40) {
		/* SACK permitted or two NOPs, the timestamp, NOP and window scale or NOPs. */
		l4_sc_put(th + 24, l4_be32(o->sack ? 0x0402080a : 0x0101080a), &s);
		l4_sc_put(th + 28, l4_be32(l4_sc_tsval(o, now_ns)), &s);
		l4_sc_put(th + 32, l4_be32(o->tsval), &s);
		l4_sc_put(th + 36, l4_be32(o->ws ? 0x01030300 | (__u32)L4_SC_WSCALE : 0x01010101), &s);
	}
	return s;
}

/* l4_sc_known reports whether the kernel has a socket, not a listener, for the packet's connection. */
static __always_inline int l4_sc_known(struct xdp_md *ctx, struct l4_sc_tuple *t, __u32 size)
{
	void *sk = bpf_skc_lookup_tcp(ctx, t, size, (__u64)-1, 0);
	if (!sk)
		return 0;
	__u32 state = *(volatile __u32 *)((uint8_t *)sk + 72); /* struct bpf_sock.state */
	bpf_sk_release(sk);
	return state != 10; /* BPF_TCP_LISTEN */
}

static __always_inline __u32 l4_syncookie(struct xdp_md *ctx, __u64 ip_off, int fam)
{
	uint8_t *data = (uint8_t *)(long)ctx->data;
	uint8_t *end = (uint8_t *)(long)ctx->data_end;
	if (ip_off > 22)
		return L4_SC_DROP;
	uint8_t *ip = data + ip_off;
	uint8_t *th;
	__u32 iplen;
	/*
	 * Copies from the packet are written as loads of 4 or 8 bytes: clang
	 * copies a memcpy from a pointer of unknown alignment byte by byte.
	 * Each family writes the tsize bytes the lookup reads.
	 */
	struct l4_sc_tuple t __attribute__((aligned(8)));
	__u32 tsize;
	if (fam == 4) {
		if (ip + 20 > end || ip[9] != 6)
			return L4_SC_DROP;
		/* Fragments other than the first carry no TCP header. */
		if (*(uint16_t *)(ip + 6) & l4_be16(0x1fff))
			return L4_SC_DROP;
		iplen = (ip[0] & 15) * 4;
		if (iplen < 20)
			return L4_SC_DROP;
		th = ip + iplen;
		if (th + 20 > end)
			return L4_SC_DROP;
		t.saddr[0] = *(__u32 *)(ip + 12);
		t.saddr[1] = *(__u32 *)(ip + 16);
		t.saddr[2] = *(__u32 *)th;
		tsize = 12;
	} else if (fam == 6) {
		if (ip + 40 > end || ip[6] != 6)
			return L4_SC_DROP;
		iplen = 40;
		th = ip + 40;
		if (th + 20 > end)
			return L4_SC_DROP;
#pragma unroll
		for (int i = 0; i < 4; i++)
			((__u64 *)&t)[i] = *(const __u64 *)(ip + 8 + 8 * i);
		t.sport = *(uint16_t *)th;
		t.dport = *(uint16_t *)(th + 2);
		tsize = 36;
	} else
		return L4_SC_DROP;
	uint8_t flags = th[13];

	if ((flags & (L4_TCP_SYN | L4_TCP_ACK | L4_TCP_RST | L4_TCP_FIN)) != L4_TCP_SYN) {
		if (l4_sc_known(ctx, &t, tsize))
			return L4_SC_KNOWN;
		if ((flags & (L4_TCP_SYN | L4_TCP_ACK | L4_TCP_RST)) != L4_TCP_ACK)
			return L4_SC_DROP;
		long err;
		/* clang drops bounds checks that later ones imply; the helper
		 * needs its own on ip, which a barrier keeps. */
		asm volatile("" : "+r"(ip));
		if (fam == 4) {
			if (ip + 20 > end)
				return L4_SC_DROP;
			err = bpf_tcp_raw_check_syncookie_ipv4(ip, th);
		} else {
			if (ip + 40 > end)
				return L4_SC_DROP;
			err = bpf_tcp_raw_check_syncookie_ipv6(ip, th);
		}
		return err ? L4_SC_BAD : L4_SC_OK;
	}

	/*
	 * A SYN for a connection the kernel still holds (a TIME_WAIT socket
	 * of the same addresses and ports, as when a client reuses its port)
	 * goes to the stack, which retires that socket: answered here, its
	 * ACK would reach that socket, not the listener, and hang.
	 */
	if (l4_sc_known(ctx, &t, tsize))
		return L4_SC_KNOWN;

	/* A SYN. */
	__u32 h = fam == 4 ? t.saddr[1] : t.daddr[0] ^ t.daddr[1] ^ t.daddr[2] ^ t.daddr[3];
	h ^= (__u32)*(uint16_t *)(th + 2) << 16 | (__u32)fam;
	/*
	 * One clock read for the armed check and the TSval: a helper call
	 * is dear where every return goes through a thunk.
	 */
	__u64 now = bpf_ktime_get_ns();
	if (l4_sc_armed(h, now))
		return L4_SC_ARMED;
	if (fam == 4 && iplen != 20)
		return L4_SC_ERR;
	__u32 thlen = (th[12] >> 4) * 4;
	if (thlen < 20 || thlen > 60)
		return L4_SC_DROP;
	struct l4_sc_syn o;
	if (!l4_sc_fast(th, end, thlen, &o)) {
		struct l4_sc_walk w = {};
		w.o.mss = L4_SC_MSS_DEFAULT;
		l4_sc_options(ctx, (__u32)(th + 20 - data), thlen - 20, &w);
		o = w.o;
	}

	/*
	 * The cookie encodes the addresses, ports, sequence number and MSS:
	 * a header of the SYN's ports and sequence number, the MSS alone and
	 * zeros (the helper reads nothing else but the data offset) gives it
	 * a constant length to read.
	 */
	__u64 syn[3];
	syn[0] = *(const __u64 *)th;
	syn[1] = l4_be64(6 << 28); /* data offset: 24 bytes */
	syn[2] = l4_be64(0x02040000 | (__u32)o.mss);
	long long c;
	asm volatile("" : "+r"(ip)); /* as for the check above */
	if (fam == 4) {
		if (ip + 20 > end)
			return L4_SC_DROP;
		c = bpf_tcp_raw_gen_syncookie_ipv4(ip, syn, 24);
	} else {
		if (ip + 40 > end)
			return L4_SC_DROP;
		c = bpf_tcp_raw_gen_syncookie_ipv6(ip, syn, 24);
	}
	if (c < 0)
		return L4_SC_ERR;
	__u32 cookie = (__u32)c;
	__u32 ports = *(const __u32 *)th;
	__u32 seq = l4_be32(*(const __u32 *)(th + 4));
	__u32 tlen = o.ts ? 40 : 24;

	long delta = (long)(ip_off + iplen + tlen) - (long)(end - data);
	if (delta && bpf_xdp_adjust_tail(ctx, (int)delta))
		return L4_SC_ERR;
	data = (uint8_t *)(long)ctx->data;
	end = (uint8_t *)(long)ctx->data_end;
	if (ip_off > 22)
		return L4_SC_ERR;
	ip = data + ip_off;
	if (data + 14 > end)
		return L4_SC_ERR;

	/* Back where it came from: swap the MAC addresses, keep VLAN tags. */
	__u32 mac0 = *(__u32 *)data;
	uint16_t mac1 = *(uint16_t *)(data + 4);
	*(__u32 *)data = *(__u32 *)(data + 6);
	*(uint16_t *)(data + 4) = *(uint16_t *)(data + 10);
	*(__u32 *)(data + 6) = mac0;
	*(uint16_t *)(data + 10) = mac1;

	/*
	 * The headers are written in 32-bit words, their checksums summed
	 * from them; the pseudo header's is the addresses', the protocol and
	 * the length.
	 */
	__u64 sum = l4_be16(6) + l4_be16((uint16_t)tlen);
	if (fam == 4) {
		if (ip + 44 > end)
			return L4_SC_ERR;
		/* Version and header length as they were; TCP, as checked. */
		__u32 src = *(__u32 *)(ip + 16), dst = *(__u32 *)(ip + 12);
		__u64 ipsum = 0;
		l4_sc_put(ip, l4_be32((__u32)ip[0] << 24 | (20 + tlen)), &ipsum);
		l4_sc_put(ip + 4, l4_be32(0x4000), &ipsum); /* DF */
		l4_sc_put(ip + 8, l4_be32(64 << 24 | 6 << 16), &ipsum);
		l4_sc_put(ip + 12, src, &ipsum);
		l4_sc_put(ip + 16, dst, &ipsum);
		*(uint16_t *)(ip + 10) = l4_sc_fold(ipsum);
		sum += (__u64)src + dst;
		th = ip + 20;
	} else {
		if (ip + 64 > end)
			return L4_SC_ERR;
		*(__u32 *)ip = l4_be32(0x60000000);
		*(__u32 *)(ip + 4) = l4_be32(tlen << 16 | 6 << 8 | 64);
#pragma unroll
		for (int i = 8; i < 24; i += 4) {
			__u32 a = *(__u32 *)(ip + i), b = *(__u32 *)(ip + i + 16);
			*(__u32 *)(ip + i) = b;
			*(__u32 *)(ip + i + 16) = a;
			sum += (__u64)a + b;
		}
		th = ip + 40;
	}
	uint16_t mss = fam == 4 ? L4_SC_MSS4 : L4_SC_MSS6;
	if (tlen == 40) {
		if (th + 40 > end)
			return L4_SC_ERR;
		sum += l4_sc_tcp(th, ports, cookie, seq + 1, 40, mss, &o, now);
	} else
		sum += l4_sc_tcp(th, ports, cookie, seq + 1, 24, mss, &o, now);
	*(uint16_t *)(th + 16) = l4_sc_fold(sum);
	return L4_SC_SENT;
}
`
