package l4drop

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// DNS rules whose patterns are all exact names (no wildcards) do not run
// one after the other: their names go into a hash map, and a packet costs
// one lookup however many such rules there are. The program reads the
// first question name once, in wire format (lower-cased for
// case-insensitive rules), and looks it up; the map says which rule, per
// family, has that name. The loader fills the map with the enabled rules
// only, first rule first, so switches and rule order work as for the
// other rules.

// dnsTables are the name tables' maps.
var dnsTables = []struct {
	name     string
	ci, wild bool
}{
	{"l4drop_dns", false, false},
	{"l4drop_dns_ci", true, false},
	{"l4drop_dns_w", false, true},
	{"l4drop_dns_wci", true, true},
}

// DNSKey is one entry of the name tables in Meta.
type DNSKey struct {
	Name string `json:"name"` // wire format, hex
	Rule int    `json:"rule"`
	// Family is 4, 6 or 0 (both).
	Family int  `json:"family"`
	CI     bool `json:"ci,omitempty"`
	// Wild keys are the rest of "*.rest" patterns: they match names with
	// one more label of any length in front.
	Wild bool `json:"wild,omitempty"`
}

// tableName returns the wire format a pattern has in the name tables, and
// whether it is a "*.rest" pattern; ok is false for patterns the tables
// cannot hold, which go through the DNS generator.
func tableName(pattern string) (wire []byte, wild, ok bool) {
	if rest, found := strings.CutPrefix(strings.Trim(pattern, "."), "*."); found {
		wire, ok = exactName(rest)
		return wire, true, ok
	}
	wire, ok = exactName(pattern)
	return wire, false, ok
}

// exactName returns the wire format of a DNS pattern that is an exact
// name, and false for patterns with wildcards or escapes, which go through
// the DNS generator.
func exactName(pattern string) ([]byte, bool) {
	if strings.ContainsAny(pattern, "*?%{}\\ ") {
		return nil, false
	}
	name := strings.Trim(pattern, ".")
	if name == "" {
		return nil, false
	}
	var wire []byte
	for _, label := range strings.Split(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return nil, false
		}
		wire = append(wire, byte(len(label)))
		wire = append(wire, label...)
	}
	wire = append(wire, 0)
	if len(wire) > 255 {
		return nil, false
	}
	return wire, true
}

// hashable reports whether rule r can live in the exact-name table: DNS
// patterns only, all exact.
func hashable(r *Rule) bool {
	if r.Bytecode != "" || r.Expr != "" || len(r.DNS) == 0 {
		return false
	}
	for _, p := range r.DNS {
		if _, _, ok := tableName(p); !ok {
			return false
		}
	}
	return true
}

// dnsKeys returns the table entries of hashable rule i.
func dnsKeys(i int, r *Rule) []DNSKey {
	var keys []DNSKey
	for _, p := range r.DNS {
		wire, wild, _ := tableName(p)
		if r.DNSCaseInsensitive {
			wire = []byte(strings.ToLower(string(wire)))
		}
		keys = append(keys, DNSKey{Name: hex.EncodeToString(wire), Rule: i, Family: famNumber(r.Family), CI: r.DNSCaseInsensitive, Wild: wild})
	}
	return keys
}

// dnsKeyLens returns the key sizes of the whole-name and the "*.rest"
// tables (multiples of 8, at least 8) and the size of the buffer the
// program reads names into: room for the longest whole name, and for the
// longest rest after a first label of up to 63 bytes.
func dnsKeyLens(keys []DNSKey) (whole, wild, buf int) {
	round := func(n int) int { return (n + 7) / 8 * 8 }
	whole, wild = 8, 8
	for _, k := range keys {
		if k.Wild {
			wild = max(wild, round(len(k.Name)/2))
		} else {
			whole = max(whole, round(len(k.Name)/2))
		}
	}
	buf = whole
	for _, k := range keys {
		if k.Wild {
			buf = max(buf, round(min(len(k.Name)/2+64, 255)))
		}
	}
	return whole, wild, buf
}

// fillDNS sets the contents of the exact-name maps for the enabled rules.
func fillDNS(spec *ebpf.CollectionSpec, m *Meta, on []bool) error {
	type val struct{ Rule4, Rule6 uint32 }
	none := uint32(len(m.Rules))
	for _, t := range dnsTables {
		ms := spec.Maps[t.name]
		if ms == nil {
			continue
		}
		order := []string{}
		vals := map[string]*val{}
		for _, k := range m.DNS {
			if k.CI != t.ci || k.Wild != t.wild {
				continue
			}
			v := vals[k.Name]
			if v == nil {
				v = &val{none, none}
				vals[k.Name] = v
				order = append(order, k.Name)
			}
			if k.Rule < 0 || k.Rule >= len(on) || !on[k.Rule] {
				continue
			}
			// Entries are in rule order: the first enabled rule wins.
			if (k.Family == 0 || k.Family == 4) && v.Rule4 == none {
				v.Rule4 = uint32(k.Rule)
			}
			if (k.Family == 0 || k.Family == 6) && v.Rule6 == none {
				v.Rule6 = uint32(k.Rule)
			}
		}
		ms.Contents = nil
		for _, name := range order {
			v := vals[name]
			if v.Rule4 == none && v.Rule6 == none {
				continue
			}
			wire, err := hex.DecodeString(name)
			if err != nil || len(wire) > int(ms.KeySize) {
				return fmt.Errorf("%s: bad DNS name %q", metaSection, name)
			}
			key := make([]byte, ms.KeySize)
			copy(key, wire)
			ms.Contents = append(ms.Contents, ebpf.MapKV{Key: key, Value: *v})
		}
	}
	return nil
}

// dnsMapsTemplate takes: key length, whether each table has names, and the
// entries of each (tables in the order of dnsTables).
const dnsMapsTemplate = `
/* Names are read into a buffer of L4_DNS_BUFLEN bytes; the tables' keys are
 * its first L4_DNS_KEYLEN bytes (whole names) or L4_DNS_WKEYLEN bytes (the
 * name after its first label). */
#define L4_DNS_BUFLEN %d
#define L4_DNS_KEYLEN %d
#define L4_DNS_WKEYLEN %d
#define L4_DNS_CS %d
#define L4_DNS_CI %d
#define L4_DNS_WCS %d
#define L4_DNS_WCI %d
struct l4_dns_buf {
	__u64 w[L4_DNS_BUFLEN / 8];
};
struct l4_dns_key {
	uint8_t b[L4_DNS_KEYLEN];
};
struct l4_dns_wkey {
	uint8_t b[L4_DNS_WKEYLEN];
};
struct l4_dns_val {
	__u32 rule4;
	__u32 rule6;
};
#define L4_DNS_MAP(name, key_type, entries)              \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_HASH);         \
		__uint(max_entries, entries);            \
		__type(key, key_type);                   \
		__type(value, struct l4_dns_val);        \
	} name SEC(".maps")
/* Whole names, and names after their first label ("*.rest"); each as
 * given and lower-cased. */
L4_DNS_MAP(l4drop_dns, struct l4_dns_key, %d);
L4_DNS_MAP(l4drop_dns_ci, struct l4_dns_key, %d);
L4_DNS_MAP(l4drop_dns_w, struct l4_dns_wkey, %d);
L4_DNS_MAP(l4drop_dns_wci, struct l4_dns_wkey, %d);

static long (*bpf_xdp_load_bytes)(struct xdp_md *ctx, __u32 off, void *buf, __u32 len) = (void *)189;

/* l4_lower lower-cases the ASCII letters in eight bytes at once. DNS label
 * lengths (at most 63) are never letters, so they are left alone. */
static __always_inline __u64 l4_lower(__u64 w)
{
	__u64 h = w & 0x7f7f7f7f7f7f7f7fULL;
	__u64 ge_a = h + 0x3f3f3f3f3f3f3f3fULL;
	__u64 gt_z = h + 0x2525252525252525ULL;
	return w | (((ge_a ^ gt_z) & ~w & 0x8080808080808080ULL) >> 2);
}

/* l4_dns_load copies up to L4_DNS_BUFLEN bytes from name into k, the rest
 * zero, and returns how many it copied (0: none). */
static __always_inline __u32 l4_dns_load(struct xdp_md *ctx, const uint8_t *data, const uint8_t *end,
					 const uint8_t *name, struct l4_dns_buf *k)
{
	if (name + L4_DNS_BUFLEN <= end) {
		/* The usual case: read the name straight from the packet. */
#pragma unroll
		for (int i = 0; i < L4_DNS_BUFLEN / 8; i++)
			k->w[i] = *(const __u64 *)(name + 8 * i);
		return L4_DNS_BUFLEN;
	}
	/* Near the packet's end: copy what there is. */
#pragma unroll
	for (int i = 0; i < L4_DNS_BUFLEN / 8; i++)
		k->w[i] = 0;
	if (name >= end)
		return 0;
	__u32 avail = end - name;
	/* Hide what clang knows, so that it keeps the checks the verifier
	 * needs to see on the register it passes; fewer than L4_DNS_BUFLEN
	 * bytes are left, so the mask changes nothing. */
	asm volatile("" : "+r"(avail));
	avail &= 0x1ff;
	if (avail == 0 || avail > L4_DNS_BUFLEN)
		return 0;
	if (bpf_xdp_load_bytes(ctx, name - data, k, avail))
		return 0;
	return avail;
}

/* l4_dns_cut zeroes the bytes after the terminating zero at p, in the
 * first n bytes of k. */
static __always_inline void l4_dns_cut(struct l4_dns_buf *k, __u32 p, const int n)
{
#pragma unroll
	for (int i = 0; i < n / 8; i++) {
		__u32 start = i * 8;
		if (start > p)
			k->w[i] = 0;
		else if (p - start < 7)
			k->w[i] &= (1ULL << ((p - start + 1) * 8)) - 1;
	}
}

/* l4_dns_find looks up the first n bytes of k as given in cs and
 * lower-cased in ci (which changes k), and returns the lower rule, or r. */
static __always_inline __u32 l4_dns_find(void *cs, void *ci, int use_cs, int use_ci, struct l4_dns_buf *k,
					 const int n, int fam, __u32 r)
{
	struct l4_dns_val *v;
	if (use_cs) {
		v = bpf_map_lookup_elem(cs, k);
		if (v) {
			__u32 c = fam == 4 ? v->rule4 : v->rule6;
			if (c < r)
				r = c;
		}
	}
	if (use_ci) {
#pragma unroll
		for (int i = 0; i < n / 8; i++)
			k->w[i] = l4_lower(k->w[i]);
		v = bpf_map_lookup_elem(ci, k);
		if (v) {
			__u32 c = fam == 4 ? v->rule4 : v->rule6;
			if (c < r)
				r = c;
		}
	}
	return r;
}

/*
 * l4_dns returns the first rule the name tables give for the first question
 * name of a DNS query (UDP to port 53), or L4_NRULES. Names compare in wire
 * format, up to and with their terminating zero: whole, and after their
 * first label for "*.rest" patterns. A compression pointer or a name
 * running past the packet matches nothing.
 */
static __always_inline __u32 l4_dns(struct xdp_md *ctx, const uint8_t *data, const uint8_t *end,
				    const uint8_t *name, int fam)
{
	struct l4_dns_buf k;
	__u32 avail = l4_dns_load(ctx, data, end, name, &k);
	if (!avail)
		return L4_NRULES;
	const uint8_t *b = (const uint8_t *)&k;
	__u32 p = 0;
	int ended = 0;
	for (int i = 0; i < L4_DNS_BUFLEN / 2 + 1; i++) {
		if (p >= avail)
			return L4_NRULES;
		uint8_t l = b[p];
		if (l == 0) {
			ended = 1;
			break;
		}
		if (l > 63)
			return L4_NRULES;
		p += l + 1;
	}
	if (!ended)
		return L4_NRULES;
	__u32 first = b[0];
	__u32 r = L4_NRULES;
	/* Keys are as long as the buffer: the terminating zero is always in
	 * them. (Explicit length checks here multiply the verifier's paths.) */
	if (L4_DNS_CS || L4_DNS_CI) {
		l4_dns_cut(&k, p, L4_DNS_KEYLEN);
		r = l4_dns_find(&l4drop_dns, &l4drop_dns_ci, L4_DNS_CS, L4_DNS_CI, &k, L4_DNS_KEYLEN, fam, r);
	}
	if ((L4_DNS_WCS || L4_DNS_WCI) && first > 0 && first <= 63) {
		/* The name after its first label. */
		if (!l4_dns_load(ctx, data, end, name + first + 1, &k))
			return r;
		l4_dns_cut(&k, p - first - 1, L4_DNS_WKEYLEN);
		r = l4_dns_find(&l4drop_dns_w, &l4drop_dns_wci, L4_DNS_WCS, L4_DNS_WCI, &k, L4_DNS_WKEYLEN, fam, r);
	}
	return r;
}

/* l4_dns_name returns where the first question name of a DNS query to UDP
 * port 53 starts, or 0. */
static __always_inline const uint8_t *l4_dns_name(const uint8_t *ip, const uint8_t *end, int fam)
{
	const uint8_t *udp;
	if (fam == 4) {
		/* UDP, and the first fragment: later ones have no UDP header. */
		if (ip[9] != 17 || ((ip[6] << 8 | ip[7]) & 0x1fff))
			return 0;
		udp = ip + (ip[0] & 15) * 4;
	} else {
		if (ip[6] != 17)
			return 0;
		udp = ip + 40;
	}
	if (udp + 8 > end || udp[2] != 0 || udp[3] != 53)
		return 0;
	return udp + 8 + 12;
}
`
