package build

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/l4drop/l4drop/l4drop"
)

// DNS rules whose patterns are all exact names or "*.rest" do not run one
// after the other: their names go into tables (whole names, and rests;
// each as given and lower-cased), and a packet costs one lookup per table
// however many such rules there are. A table with few names compares them
// inline, each behind its rule's switch; a larger one is a hash table (an
// array map of buckets, see hashtable.go), which says which rule, per
// family, has that name. The loader fills the maps
// with the enabled rules only, first rule first, so switches and rule
// order work as for the other rules.

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
	// A NUL would break the tables' test of where a name ends
	// (writeMapTable): such names go through the generator.
	if strings.ContainsAny(pattern, "*?%{}\\ \x00") {
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
func dnsKeys(i int, r *Rule) []l4drop.DNSKey {
	var keys []l4drop.DNSKey
	for _, p := range r.DNS {
		wire, wild, _ := tableName(p)
		if r.DNSCaseInsensitive {
			wire = []byte(strings.ToLower(string(wire)))
		}
		keys = append(keys, l4drop.DNSKey{Name: hex.EncodeToString(wire), Rule: i, Family: famNumber(r.Family), CI: r.DNSCaseInsensitive, Wild: wild,
			Code: r.Action.code()})
	}
	return keys
}

// DefaultMaxInlineDNS is how many names a table may have and still be
// compared inline (see BuildOptions.MaxInlineDNS).
const DefaultMaxInlineDNS = 8

// A packet's name is compared in wire format, a few bytes at a time, with
// no walk over its labels: wire names are prefix-free, so if the first L
// bytes of the packet's name are a name of the table, L bytes long, the
// packet's name is that name, however its labels read. A table is tried
// once per length its names have, shortest first, and a lookup happens
// only where the byte that ends such a name is zero and the one before it
// is not (no byte of a name but its last is zero). Tables with few names
// compare them inline, without a map, each guarded by its rule's switch.

// dnsEntry is a name of a table with the rule and family it belongs to.
type dnsEntry struct {
	wire   []byte
	rule   int
	code   int // the rule's action's
	family int
}

// result is what the tables return for e: its rule and code, as every
// test returns them.
func (e dnsEntry) result() string { return fmt.Sprintf("%#x", testResult(e.rule, e.code)) }

// dnsTable is one of l4drop.DNSTables with its names.
type dnsTable struct {
	name     string
	ci, wild bool
	entries  []dnsEntry // in rule order
	inline   bool
	keyLen   int // bytes of names in the map's slots, a multiple of 8
	hash     l4drop.HashTable
}

// lengths returns the lengths of the table's names, shortest first.
func (t *dnsTable) lengths() []int {
	seen := map[int]bool{}
	var ls []int
	for _, e := range t.entries {
		if !seen[len(e.wire)] {
			seen[len(e.wire)] = true
			ls = append(ls, len(e.wire))
		}
	}
	slices.Sort(ls)
	return ls
}

// probeOrder returns the lengths of the table's names in the order a
// packet tries them: those of more names first (of as many, shorter
// first). A name matches at its length only, so the order does not
// change what matches, only how many lengths a packet tries before it:
// one in ten at 1,000 names of 22 to 24 bytes (host0 to host999), where
// shortest first took 0.7 ns a packet more for the longest.
func (t *dnsTable) probeOrder() []int {
	count := map[int]int{}
	for _, e := range t.entries {
		count[len(e.wire)]++
	}
	ls := t.lengths()
	slices.SortStableFunc(ls, func(a, b int) int { return count[b] - count[a] })
	return ls
}

// chunk is a piece of a name loaded at once.
type chunk struct{ off, size int }

// chunks covers n bytes with as few loads as possible, overlapping: all
// within the n bytes, so the one bounds check p + n <= end covers them.
func chunks(n int) []chunk {
	var cs []chunk
	for _, size := range []int{8, 4, 2, 1} {
		if n < size {
			continue
		}
		for off := 0; off+size <= n; off += size {
			cs = append(cs, chunk{off, size})
		}
		if n%size != 0 {
			cs = append(cs, chunk{n - size, size})
		}
		return cs
	}
	return nil
}

// leConst is bytes as the C constant a little-endian load of them gives,
// in a macro that swaps it on big-endian targets.
func leConst(b []byte) string {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return fmt.Sprintf("L4_LE%d(0x%xULL)", 8*len(b), v)
}

// dnsPlan sorts the keys into tables and decides which are inline.
func dnsPlan(keys []l4drop.DNSKey, maxInline int) ([]dnsTable, error) {
	var tabs []dnsTable
	for _, d := range l4drop.DNSTables {
		if d.Long {
			continue
		}
		var all []dnsEntry
		names := map[string]bool{}
		for _, k := range keys {
			if k.CI != d.CI || k.Wild != d.Wild {
				continue
			}
			wire, err := hex.DecodeString(k.Name)
			if err != nil || len(wire) == 0 || len(wire) > 255 {
				return nil, fmt.Errorf("bad DNS name %q", k.Name)
			}
			all = append(all, dnsEntry{wire: wire, rule: k.Rule, code: k.Code, family: k.Family})
			names[k.Name] = true
		}
		if len(all) == 0 {
			continue
		}
		if len(names) <= maxInline {
			tabs = append(tabs, dnsTable{name: d.Name, ci: d.CI, wild: d.Wild, entries: all, inline: true})
			continue
		}
		for _, long := range []bool{false, true} {
			t := dnsTable{name: dnsMapName(d.CI, d.Wild, long), ci: d.CI, wild: d.Wild}
			var distinct [][]uint64
			seen := map[string]bool{}
			for _, e := range all {
				if len(e.wire) > l4drop.MaxShortName != long {
					continue
				}
				t.entries = append(t.entries, e)
				t.keyLen = max(t.keyLen, (len(e.wire)+7)/8*8)
				if !seen[string(e.wire)] {
					seen[string(e.wire)] = true
					distinct = append(distinct, l4drop.NameWords(e.wire))
				}
			}
			if len(t.entries) == 0 {
				continue
			}
			h, err := l4drop.PlanHash(distinct)
			if err != nil {
				return nil, fmt.Errorf("DNS table %s: %w", t.name, err)
			}
			t.hash = h
			tabs = append(tabs, t)
		}
	}
	return tabs, nil
}

// dnsMapName is the map of the names of a kind, long or not.
func dnsMapName(ci, wild, long bool) string {
	for _, d := range l4drop.DNSTables {
		if d.CI == ci && d.Wild == wild && d.Long == long {
			return d.Name
		}
	}
	return ""
}

// dnsC returns the C of l4_dns(name, end, fam), which returns the first
// rule whose names the query name at name matches (rule << 4 | its
// action's code, as the other tests return it), or L4_DNS_MISS, the
// rules whose switches it uses (those with names compared inline), and
// the hashes of the tables that are maps.
func dnsC(keys []l4drop.DNSKey, maxInline int) (string, map[int]bool, map[string]l4drop.HashTable, error) {
	tabs, err := dnsPlan(keys, maxInline)
	if err != nil {
		return "", nil, nil, err
	}
	switches := map[int]bool{}
	hashes := map[string]l4drop.HashTable{}
	var b strings.Builder
	b.WriteString(dnsPrelude)
	for ti := range tabs {
		t := &tabs[ti]
		if t.inline {
			writeInlineTable(&b, t, switches)
		} else {
			writeMapTable(&b, t)
			hashes[t.name] = t.hash
		}
	}
	b.WriteString(`
/*
 * l4_dns returns the first rule the name tables give for the first question
 * name of a DNS query, at name, as rule << 4 | its action's code, or
 * L4_DNS_MISS. Names compare in wire format,
 * up to and with their terminating zero: whole, and after their first
 * label for "*.rest" patterns. A compression pointer or a name running
 * past the packet matches nothing. A map of exact names (as given) holds
 * the first rule of every table for each of its names: found there, a
 * name needs no other lookup.
 */
static __always_inline __u32 l4_dns(const uint8_t *name, const uint8_t *end, int fam)
{
	__u32 r = L4_DNS_MISS, c;
`)
	wild := false
	for _, t := range tabs {
		if t.wild {
			wild = true
			continue
		}
		fmt.Fprintf(&b, "\tc = %s_find(name, end, fam);\n", t.name)
		if !t.ci && !t.inline {
			// The loader gives the slot the name's first rule in every
			// table (l4drop's withOthers): nothing else can come first.
			b.WriteString("\tif (c != L4_NONE)\n\t\treturn c;\n")
			continue
		}
		b.WriteString("\tif (c < r)\n\t\tr = c;\n")
	}
	if wild {
		b.WriteString("\tif (name + 1 > end)\n\t\treturn r;\n")
		b.WriteString("\t__u32 first = name[0];\n\tif (first == 0 || first > 63)\n\t\treturn r;\n")
		b.WriteString("\tconst uint8_t *rest = name + 1 + first;\n")
		for _, t := range tabs {
			if t.wild {
				fmt.Fprintf(&b, "\tc = %s_find(rest, end, fam);\n\tif (c < r)\n\t\tr = c;\n", t.name)
			}
		}
	}
	b.WriteString("\treturn r;\n}\n")
	return b.String(), switches, hashes, nil
}

func famCond(family int) string {
	if family == 0 {
		return ""
	}
	return fmt.Sprintf("fam == %d && ", family)
}

func tableComment(t *dnsTable) string {
	what := "whole names"
	if t.wild {
		what = `names after their first label ("*.rest")`
	}
	if t.ci {
		what += ", lower-cased"
	}
	how := fmt.Sprintf("looked up in a map (keys of %d bytes)", t.keyLen)
	if t.inline {
		how = "compared inline"
	}
	return fmt.Sprintf("\n/* %s: %s, %s. */\n", t.name, what, how)
}

// writeInlineTable writes a table function comparing each name in turn:
// per length, the packet's bytes are loaded once, and the names of that
// length tried in rule order.
func writeInlineTable(b *strings.Builder, t *dnsTable, switches map[int]bool) {
	b.WriteString(tableComment(t))
	fmt.Fprintf(b, "static __always_inline __u32 %s_find(const uint8_t *p, const uint8_t *end, int fam)\n{\n", t.name)
	for _, n := range t.lengths() {
		fmt.Fprintf(b, "\tif (p + %d <= end) {\n", n)
		cs := chunks(n)
		for i, c := range cs {
			load := fmt.Sprintf("L4_LD%d(p, %d)", 8*c.size, c.off)
			if t.ci {
				load = "l4_lower(" + load + ")"
			}
			fmt.Fprintf(b, "\t\t__u64 w%d = %s;\n", i, load)
		}
		for _, e := range t.entries {
			if len(e.wire) != n {
				continue
			}
			switches[e.rule] = true
			var conds []string
			for i, c := range cs {
				conds = append(conds, fmt.Sprintf("w%d == %s", i, leConst(e.wire[c.off:c.off+c.size])))
			}
			fmt.Fprintf(b, "\t\tif (%sL4_ENABLED(%s) &&\n\t\t    %s)\n\t\t\treturn %s;\n",
				famCond(e.family), enableSymbol(e.rule), strings.Join(conds, " && "), e.result())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("\treturn L4_NONE;\n}\n")
}

// writeMapTable writes a table's map, filled by the loader, and its
// function: per length, where the byte ending a name of that length is
// zero, the bucket the packet's bytes hash to is compared slot by slot.
// A name found is the packet's name: no other length can match then.
//
// A slot's words are compared without its length (which tells the loader
// the slot is taken), 0.5 ns a packet less at 1,000 names: equal words
// are a name of the probed length n. The packet's words are its first n
// bytes, zero-padded, byte n-1 zero and byte n-2 not. A name m < n bytes
// long, padded, has a zero at n-2; one longer has no zero at n-1, none of
// its bytes but the last being zero (exactName); an empty slot is zeros.
func writeMapTable(b *strings.Builder, t *dnsTable) {
	b.WriteString(tableComment(t))
	fmt.Fprintf(b, "struct %s_slot {\n\t__u32 len;\n\t__u32 rule4;\n\t__u32 rule6;\n\t__u32 pad;\n\t__u64 w[%d];\n};\n", t.name, t.keyLen/8)
	fmt.Fprintf(b, "struct %s_bucket {\n\tstruct %s_slot s[L4_HASH_SLOTS];\n};\n", t.name, t.name)
	decl, bucket := tableC(t.name, t.name+"_bucket", t.hash.Bits, 4*(16+t.keyLen))
	b.WriteString(decl)
	fmt.Fprintf(b, "static __always_inline __u32 %s_find(const uint8_t *p, const uint8_t *end, int fam)\n{\n", t.name)
	fmt.Fprintf(b, "\t__u32 idx;\n\t__u64 h;\n\tstruct %s_bucket *bk;\n", t.name)
	// Where every name's rules are of both families, the loader gives a
	// slot the same rule for both: the program need not pick one.
	rule := "e->rule4"
	for _, e := range t.entries {
		if e.family != 0 {
			rule = "fam == 4 ? e->rule4 : e->rule6"
			break
		}
	}
	for _, n := range t.probeOrder() {
		// A name of n bytes ends in a zero after a byte that is not
		// (the two bytes read as one, 1 to 255): the zero that is a
		// query type's high byte, after a name one byte shorter,
		// would cost a packet a hash and a bucket (4 ns) for nothing.
		fmt.Fprintf(b, "\tif (p + %d <= end && (__u32)L4_LD16(p, %d) - 1 < 0xff) {\n", n, n-2)
		words := (n + 7) / 8
		for i := 0; i < words; i++ {
			var val string
			switch {
			case 8*i+8 <= n:
				val = fmt.Sprintf("L4_LD64(p, %d)", 8*i)
			case n >= 8:
				// The tail: the last eight bytes, shifted.
				val = fmt.Sprintf("L4_TAIL(L4_LD64(p, %d), %d)", n-8, 8*(8*i+8-n))
			default:
				val = shortWord(n)
			}
			if t.ci {
				val = "l4_lower(" + val + ")"
			}
			fmt.Fprintf(b, "\t\t__u64 w%d = %s;\n", i, val)
		}
		var conds, terms []string
		for i := 0; i < words; i++ {
			terms = append(terms, fmt.Sprintf("w%d * %s", i, mulC(t.hash, i)))
			conds = append(conds, fmt.Sprintf("e->w[%d] == w%d", i, i))
		}
		fmt.Fprintf(b, "\t\th = %s;\n", strings.Join(terms, " + "))
		fmt.Fprintf(b, "\t\tidx = h >> %d;\n", 64-t.hash.Bits)
		fmt.Fprintf(b, "\t\tbk = %s;\n\t\tif (bk) {\n", bucket("idx"))
		fmt.Fprintf(b, "#pragma unroll\n\t\t\tfor (int s = 0; s < L4_HASH_SLOTS; s++) {\n\t\t\t\tstruct %s_slot *e = &bk->s[s];\n", t.name)
		fmt.Fprintf(b, "\t\t\t\tif (%s)\n\t\t\t\t\treturn %s;\n\t\t\t}\n\t\t}\n\t}\n",
			strings.Join(conds, " && "), rule)
	}
	b.WriteString("\treturn L4_NONE;\n}\n")
}

// shortWord is the C of a key word holding a name of n < 8 bytes at p.
func shortWord(n int) string {
	var parts []string
	off := 0
	for _, size := range []int{4, 2, 1} {
		if n-off >= size {
			parts = append(parts, fmt.Sprintf("L4_AT(L4_LD%d(p, %d), %d, %d)", 8*size, off, off, size))
			off += size
		}
	}
	return strings.Join(parts, " | ")
}

// dnsPrelude is what the table functions need.
const dnsPrelude = `
/* What l4_dns returns for a DNS query none of whose names match; for a
 * packet that is no DNS query, l4_dns_in returns L4_NONE. */
#define L4_DNS_MISS 0xfffffffeu

struct l4_dns_val {
	__u32 rule4;
	__u32 rule6;
};
/* Loads of names, unaligned, as integers. Constants are the integers
 * little-endian loads give; L4_LE* swaps them for big-endian targets. In a
 * key word, L4_AT places a value loaded at byte off (of the word), and
 * L4_TAIL keeps the last 8 - bits/8 bytes of a word loaded, at the front. */
#define L4_LD64(p, off) ((__u64)*(const __u64 *)((p) + (off)))
#define L4_LD32(p, off) ((__u64)*(const __u32 *)((p) + (off)))
#define L4_LD16(p, off) ((__u64)*(const uint16_t *)((p) + (off)))
#define L4_LD8(p, off) ((__u64)*(const uint8_t *)((p) + (off)))
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define L4_LE64(x) __builtin_bswap64(x)
#define L4_LE32(x) __builtin_bswap32(x)
#define L4_LE16(x) __builtin_bswap16(x)
#define L4_AT(v, off, size) ((v) << (64 - 8 * (off) - 8 * (size)))
#define L4_TAIL(w, bits) ((w) << (bits))
#else
#define L4_LE64(x) (x)
#define L4_LE32(x) (x)
#define L4_LE16(x) (x)
#define L4_AT(v, off, size) ((v) << (8 * (off)))
#define L4_TAIL(w, bits) ((w) >> (bits))
#endif
#define L4_LE8(x) (x)

/* l4_lower lower-cases the ASCII letters in eight bytes at once. DNS label
 * lengths (at most 63) are never letters, so they are left alone. */
static __always_inline __u64 l4_lower(__u64 w)
{
	__u64 h = w & 0x7f7f7f7f7f7f7f7fULL;
	__u64 ge_a = h + 0x3f3f3f3f3f3f3f3fULL;
	__u64 gt_z = h + 0x2525252525252525ULL;
	return w | (((ge_a ^ gt_z) & ~w & 0x8080808080808080ULL) >> 2);
}

/* l4_dns_name returns where the first question name of a DNS query to UDP
 * port 53 starts, or 0. */
static __always_inline const uint8_t *l4_dns_name(const uint8_t *ip, const uint8_t *end, int fam)
{
	const uint8_t *udp;
	/* The checks of the DNS rules' cBPF (bpfgen's udpPortCheck), so that
	 * the table agrees with them on malformed headers too. */
	if (fam == 4) {
		/* Version 4, a header of 20 bytes or more, UDP, and the first
		 * fragment: later ones have no UDP header. */
		if (ip + 20 > end || (__u32)ip[0] - 0x45 > 0x4f - 0x45 || ip[9] != 17 ||
		    (*(const uint16_t *)(ip + 6) & L4_BE16(0x1fff)))
			return 0;
		udp = ip + (ip[0] & 15) * 4;
	} else {
		if (ip + 40 > end || (ip[0] >> 4) != 6 || ip[6] != 17)
			return 0;
		udp = ip + 40;
	}
	/* 16-bit loads compared with constants in network order: fewer
	 * instructions than byte by byte, on every DNS packet. */
	if (udp + 8 > end || *(const uint16_t *)(udp + 2) != L4_BE16(53))
		return 0;
	return udp + 8 + 12;
}
`
