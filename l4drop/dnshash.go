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

const (
	mapDNS   = "l4drop_dns"
	mapDNSCI = "l4drop_dns_ci"
)

// DNSKey is one entry of the exact-name table in Meta.
type DNSKey struct {
	Name string `json:"name"` // wire format, hex
	Rule int    `json:"rule"`
	// Family is 4, 6 or 0 (both).
	Family int  `json:"family"`
	CI     bool `json:"ci,omitempty"`
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
		if _, ok := exactName(p); !ok {
			return false
		}
	}
	return true
}

// dnsKeys returns the table entries of hashable rule i.
func dnsKeys(i int, r *Rule) []DNSKey {
	var keys []DNSKey
	for _, p := range r.DNS {
		wire, _ := exactName(p)
		if r.DNSCaseInsensitive {
			wire = []byte(strings.ToLower(string(wire)))
		}
		keys = append(keys, DNSKey{Name: hex.EncodeToString(wire), Rule: i, Family: famNumber(r.Family), CI: r.DNSCaseInsensitive})
	}
	return keys
}

// dnsKeyLen is the key size for names up to longest bytes: a multiple of 8.
func dnsKeyLen(keys []DNSKey) int {
	n := 8
	for _, k := range keys {
		n = max(n, (len(k.Name)/2+7)/8*8)
	}
	return n
}

// fillDNS sets the contents of the exact-name maps for the enabled rules.
func fillDNS(spec *ebpf.CollectionSpec, m *Meta, on []bool) error {
	type val struct{ Rule4, Rule6 uint32 }
	none := uint32(len(m.Rules))
	for _, mapName := range []string{mapDNS, mapDNSCI} {
		ms := spec.Maps[mapName]
		if ms == nil {
			continue
		}
		ci := mapName == mapDNSCI
		order := []string{}
		vals := map[string]*val{}
		for _, k := range m.DNS {
			if k.CI != ci {
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

// dnsMapsTemplate takes: key length, whether there are case-sensitive and
// case-insensitive names, and the entries of each map.
const dnsMapsTemplate = `
#define L4_DNS_KEYLEN %d
#define L4_DNS_CS %d
#define L4_DNS_CI %d
struct l4_dns_key {
	__u64 w[L4_DNS_KEYLEN / 8];
};
struct l4_dns_val {
	__u32 rule4;
	__u32 rule6;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, %d);
	__type(key, struct l4_dns_key);
	__type(value, struct l4_dns_val);
} l4drop_dns SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, %d);
	__type(key, struct l4_dns_key);
	__type(value, struct l4_dns_val);
} l4drop_dns_ci SEC(".maps");

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

/*
 * l4_dns returns the rule the exact-name table gives for the first question
 * name of a DNS query (UDP to port 53), or L4_NRULES. The name is compared
 * whole, in wire format, up to and with its terminating zero; a
 * compression pointer or a name running past the packet matches nothing.
 */
static __always_inline __u32 l4_dns(struct xdp_md *ctx, const uint8_t *data, const uint8_t *end,
				    const uint8_t *name, int fam)
{
	struct l4_dns_key k = {};
	__u32 avail = L4_DNS_KEYLEN;
	if (name + L4_DNS_KEYLEN <= end) {
		/* The usual case: read the name straight from the packet. */
#pragma unroll
		for (int i = 0; i < L4_DNS_KEYLEN / 8; i++)
			k.w[i] = *(const __u64 *)(name + 8 * i);
	} else {
		/* Near the packet's end: copy what there is. */
		if (name >= end)
			return L4_NRULES;
		avail = end - name;
		/* Hide what clang knows, so that it keeps the checks the
		 * verifier needs to see on the register it passes; fewer than
		 * L4_DNS_KEYLEN bytes are left, so the mask changes nothing. */
		asm volatile("" : "+r"(avail));
		avail &= 0x1ff;
		if (avail == 0 || avail > L4_DNS_KEYLEN)
			return L4_NRULES;
		if (bpf_xdp_load_bytes(ctx, name - data, &k, avail))
			return L4_NRULES;
	}
	const uint8_t *b = (const uint8_t *)&k;
	__u32 p = 0;
	int ended = 0;
	for (int i = 0; i < L4_DNS_KEYLEN / 2 + 1; i++) {
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
	__u32 r = L4_NRULES;
#pragma unroll
	for (int i = 0; i < L4_DNS_KEYLEN / 8; i++) {
		__u32 start = i * 8;
		if (start > p) {
			k.w[i] = 0;
		} else if (p - start < 7) {
			/* Keep the bytes up to the terminating zero. */
			k.w[i] &= (1ULL << ((p - start + 1) * 8)) - 1;
		}
	}
	struct l4_dns_val *v;
	if (L4_DNS_CS) {
		v = bpf_map_lookup_elem(&l4drop_dns, &k);
		if (v)
			r = fam == 4 ? v->rule4 : v->rule6;
	}
	if (L4_DNS_CI) {
#pragma unroll
		for (int i = 0; i < L4_DNS_KEYLEN / 8; i++)
			k.w[i] = l4_lower(k.w[i]);
		v = bpf_map_lookup_elem(&l4drop_dns_ci, &k);
		if (v) {
			__u32 c = fam == 4 ? v->rule4 : v->rule6;
			if (c < r)
				r = c;
		}
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
