package build

// autoEvalC evaluates the auto rules (l4drop.AutoC, the contract in
// l4drop/auto.go) after a rule set's own rules: l4_auto returns the first
// slot in state drop whose conditions hold, or L4_AUTO_NONE; slots in
// state monitor that match on the way are counted and sampled. Each
// condition agrees with libpcap on the rule's pcap-filter rendering
// (AutoRule.Expr): a field beyond the packet is no match, the transport
// header of IPv4 is at IHL*4 in first fragments only, the payload after
// UDP's 8 bytes or TCP's data offset.
const autoEvalC = `
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define L4_LOAD_BE16(p) ((__u32)*(const uint16_t *)(p))
#define L4_LOAD_BE32(p) (*(const __u32 *)(p))
#else
#define L4_LOAD_BE16(p) ((__u32)__builtin_bswap16(*(const uint16_t *)(p)))
#define L4_LOAD_BE32(p) __builtin_bswap32(*(const __u32 *)(p))
#endif

/* l4_auto_load loads the big-endian field of size bytes at ip + o into *v;
 * 0 when it lies beyond the packet. */
static __always_inline int l4_auto_load(const uint8_t *ip, const uint8_t *end, __u32 o, __u32 size, __u32 *v)
{
	/* Linear XDP data is at most a page: 16 KiB more than a packet has is
	 * beyond it too, and the bound lets the verifier see the loads. */
	if (o >= 0x4000)
		return 0;
	const uint8_t *p = ip + o;
	if (size == 1) {
		if (p + 1 > end)
			return 0;
		*v = p[0];
		return 1;
	}
	/* One load, swapped: packet loads need no alignment here. */
	if (size == 2) {
		if (p + 2 > end)
			return 0;
		*v = L4_LOAD_BE16(p);
		return 1;
	}
	if (p + 4 > end)
		return 0;
	*v = L4_LOAD_BE32(p);
	return 1;
}

/* l4_auto_test reports whether condition c of a rule for protocol proto
 * (0: any) holds for the packet whose IP header is at ip, of family fam. */
static __always_inline int l4_auto_test(const struct l4_auto_cond *c, const uint8_t *ip, const uint8_t *end, __u32 fam, __u32 proto)
{
	__u32 base = 0, mask = c->mask, v;
	if (c->base == 3) {
		v = end - ip;
		mask = 0xffffffffu;
	} else {
		if (c->base == 1 || c->base == 2) {
			if (fam == 4) {
				/* tcp[] and udp[]: first fragments only. */
				if (!l4_auto_load(ip, end, 6, 2, &v) || (v & 0x1fff))
					return 0;
				base = (ip[0] & 15) * 4;
			} else {
				base = 40;
			}
			if (c->base == 2) {
				if (proto == 17) {
					base += 8;
				} else {
					if (!l4_auto_load(ip, end, base + 12, 1, &v))
						return 0;
					base += (v >> 4) * 4;
				}
			}
		}
		if (!l4_auto_load(ip, end, base + c->off, c->size, &v))
			return 0;
	}
	v &= mask;
	return v >= c->min && v <= c->max;
}

/* l4_auto_rule_matches reports whether auto rule a matches the packet
 * whose IP header is at ip, of family fam (by its ethertype). */
static __always_inline int l4_auto_rule_matches(const struct l4_auto_rule *a, const uint8_t *ip, const uint8_t *end, __u32 fam)
{
	__u32 proto = a->proto, n = a->ncond, v;
	if (a->family != fam)
		return 0;
	if (proto && (!l4_auto_load(ip, end, fam == 4 ? 9 : 6, 1, &v) || v != proto))
		return 0;
	for (__u32 i = 0; i < L4_AUTO_CONDS; i++) {
		if (i >= n)
			break;
		if (!l4_auto_test(&a->cond[i], ip, end, fam, proto))
			return 0;
	}
	return 1;
}

/*
 * The auto rules are checked by two global functions, their loops not
 * unrolled: the verifier checks a global function once, on its own,
 * rather than at every call (a global function cannot take packet
 * pointers: each finds the packet in ctx). l4_auto_slots tests the first
 * slot itself, which holds the rule an attack deployed first, and calls
 * l4_auto_match for the others. Where returns go through a return thunk
 * (SRSO's Safe RET) a call costs a packet about 10 ns: a function a
 * condition, as there was, cost 129 ns for a rule of 8 conditions (now
 * 33); one function for all would cost the verifier its 16 slots times 8
 * conditions (290,000 instructions processed, 0.4 s a load). The first
 * slot is written out before the loop: tested in the loop (k == 0 ? here :
 * call), clang derives the packet pointer again from a 32-bit spill of
 * ipoff, and the verifier refuses the loads.
 */

/* l4_auto_match reports whether auto rule slot matches the packet whose IP
 * header is at ipoff, of family fam. */
__attribute__((noinline)) int l4_auto_match(struct xdp_md *ctx, __u32 ipoff, __u32 fam, __u32 slot)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	if (ipoff > L4_MAX_IPOFF)
		return 0;
	const uint8_t *ip = data + ipoff;
	/* Made here, where the verifier knows ipoff's bound: clang would
	 * make it after the lookup from a 32-bit spill of ipoff, which the
	 * verifier does not track. */
	asm volatile("" : "+r"(ip));
	struct l4_auto_rule *a = bpf_map_lookup_elem(&l4drop_auto, &slot);
	return a && l4_auto_rule_matches(a, ip, end, fam);
}

/* l4_auto_slots returns the first slot of the n in use (n > 0) in state
 * drop whose rule matches, counting and sampling the monitor ones that
 * match on the way. */
__attribute__((noinline)) __u32 l4_auto_slots(struct xdp_md *ctx, __u32 ipoff, __u32 fam, __u32 n)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	if (ipoff > L4_MAX_IPOFF)
		return L4_AUTO_NONE;
	const uint8_t *ip = data + ipoff;
	asm volatile("" : "+r"(ip)); /* as in l4_auto_match */
	__u32 zero = 0;
	struct l4_auto_rule *a = bpf_map_lookup_elem(&l4drop_auto, &zero);
	if (a) {
		__u32 state = a->state;
		if ((state == 1 || state == 2) && l4_auto_rule_matches(a, ip, end, fam)) {
			if (state == 1)
				return 0;
			l4_monitor(ctx, L4_NRULES + 1);
		}
	}
	for (__u32 k = 1; k < L4_AUTO_SLOTS; k++) {
		if (k >= n)
			break;
		__u32 key = k;
		a = bpf_map_lookup_elem(&l4drop_auto, &key);
		if (!a)
			continue;
		__u32 state = a->state;
		if ((state != 1 && state != 2) || !l4_auto_match(ctx, ipoff, fam, k))
			continue;
		if (state == 1)
			return k;
		l4_monitor(ctx, L4_NRULES + 1 + k);
	}
	return L4_AUTO_NONE;
}

/* l4_auto: while the table is empty, one load and a branch. */
static __always_inline __u32 l4_auto(struct xdp_md *ctx, const uint8_t *data, const uint8_t *ip, int fam)
{
	__u32 n = *(volatile __u32 *)&l4drop_auto_n;
	if (!n)
		return L4_AUTO_NONE;
	return l4_auto_slots(ctx, ip - data, fam, n);
}
`
