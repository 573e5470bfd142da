package l4drop

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/cilium/ebpf"
)

// The tables a built program looks constants up in: the build plans them
// (names, sets of rules tested at once, their hashes) into Meta, and the
// loader fills them with the enabled rules only.

// DNSTables are the name tables' maps. A table in maps keeps its names
// longer than MaxShortName apart, so that one long name does not make every
// slot of the map as long.
var DNSTables = []struct {
	Name           string
	CI, Wild, Long bool
}{
	{"l4drop_dns", false, false, false},
	{"l4drop_dns_ci", true, false, false},
	{"l4drop_dns_w", false, true, false},
	{"l4drop_dns_wci", true, true, false},
	{"l4drop_dnsl", false, false, true},
	{"l4drop_dnsl_ci", true, false, true},
	{"l4drop_dnsl_w", false, true, true},
	{"l4drop_dnsl_wci", true, true, true},
}

// MaxShortName is the longest name (in wire format) of the maps of short
// names.
const MaxShortName = 32

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
	// Code is the rule's action code: a slot holds the rule as
	// Rule<<ResultShift | Code, what a test of the programs returns.
	Code int `json:"code,omitempty"`
}

// ResultShift is how far the programs shift a rule's index in what a test
// returns, to make room for the code of the rule's action.
const ResultShift = 4

// resultNone is a test's result for no rule (L4_NONE).
const resultNone = 0xffffffff

// dnsKind is one kind of name table: case-insensitive or not, whole names
// or "*.rest" rests. Short and long maps of a kind share it.
type dnsKind struct{ ci, wild bool }

// dnsRules is the first enabled rule a name has, per family, with its
// code (DNSKey.Code), or resultNone.
type dnsRules struct{ rule4, rule6 uint32 }

// firstOf lowers r to the rules of o where those come first.
func (r *dnsRules) firstOf(o dnsRules) {
	r.rule4 = min(r.rule4, o.rule4)
	r.rule6 = min(r.rule6, o.rule6)
}

// dnsFirsts returns, per kind, each name's first enabled rules (keyed by
// the name as Meta has it, hex), and the names of each kind in the order
// they first appear. It refuses an entry whose rule or code is out of range.
func dnsFirsts(m *Meta, on []bool) (map[dnsKind]map[string]*dnsRules, map[dnsKind][]string, error) {
	firsts := map[dnsKind]map[string]*dnsRules{}
	order := map[dnsKind][]string{}
	for _, k := range m.DNS {
		if k.Rule < 0 || k.Rule >= len(m.Rules) || k.Code < 0 || k.Code >= 1<<ResultShift {
			return nil, nil, fmt.Errorf("%s: DNS name %q: bad rule %d or code %d", MetaSection, k.Name, k.Rule, k.Code)
		}
		kind := dnsKind{k.CI, k.Wild}
		if firsts[kind] == nil {
			firsts[kind] = map[string]*dnsRules{}
		}
		v := firsts[kind][k.Name]
		if v == nil {
			v = &dnsRules{resultNone, resultNone}
			firsts[kind][k.Name] = v
			order[kind] = append(order[kind], k.Name)
		}
		if k.Rule >= len(on) || !on[k.Rule] {
			continue
		}
		r := uint32(k.Rule)<<ResultShift | uint32(k.Code)
		// Entries are in rule order: the first enabled rule wins.
		if (k.Family == 0 || k.Family == 4) && v.rule4 == resultNone {
			v.rule4 = r
		}
		if (k.Family == 0 || k.Family == 6) && v.rule6 == resultNone {
			v.rule6 = r
		}
	}
	return firsts, order, nil
}

// withOthers returns the rules an exact, case-sensitive name (wire
// format) has in all the tables: the first of its own, of its lower-cased
// self, of its rest after the first label, and of that lower-cased. A
// packet whose name is that name matches exactly these, so the program,
// having found it there, looks no further (l4_dns): a wildcard rule before
// the name's own still wins. The lookups are the program's: lower-casing
// is ASCII's (l4_lower), the rest starts after the first label's length
// byte and label.
func withOthers(firsts map[dnsKind]map[string]*dnsRules, wire []byte, own dnsRules) dnsRules {
	add := func(kind dnsKind, name []byte) {
		if v := firsts[kind][hex.EncodeToString(name)]; v != nil {
			own.firstOf(*v)
		}
	}
	add(dnsKind{ci: true}, asciiLower(wire))
	if n := int(wire[0]); n >= 1 && n <= 63 && 1+n < len(wire) {
		rest := wire[1+n:]
		add(dnsKind{wild: true}, rest)
		add(dnsKind{ci: true, wild: true}, asciiLower(rest))
	}
	return own
}

// asciiLower lower-cases the ASCII letters of b, as l4_lower does.
func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}

// fillDNS fills the DNS name maps with the names of the enabled rules. A
// slot of the maps of exact, case-sensitive names holds the first rule
// the name has in any table (withOthers).
func fillDNS(spec *ebpf.CollectionSpec, m *Meta, on []bool) error {
	firsts, order, err := dnsFirsts(m, on)
	if err != nil {
		return err
	}
	for _, t := range DNSTables {
		h := m.DNSHash[t.Name]
		tab, ok, err := findTable(spec, t.Name, h.Bits)
		if !ok {
			continue
		}
		if err != nil || h.Bits < 1 || h.Bits > maxHashBits || tab.bucketSize%hashSlots != 0 {
			return fmt.Errorf("%s: DNS table %s: unknown layout", MetaSection, t.Name)
		}
		slotSize := tab.bucketSize / hashSlots
		kind := dnsKind{t.CI, t.Wild}
		fill := newBucketFill(hashSlots, slotSize, 0) // a name's length is never 0
		for _, name := range order[kind] {
			if len(name)/2 > MaxShortName != t.Long {
				continue
			}
			wire, err := hex.DecodeString(name)
			if err != nil || len(wire) == 0 || 16+len(wire) > slotSize {
				return fmt.Errorf("%s: bad DNS name %q", MetaSection, name)
			}
			v := *firsts[kind][name]
			if kind == (dnsKind{}) {
				v = withOthers(firsts, wire, v)
			}
			if v.rule4 == resultNone && v.rule6 == resultNone {
				continue
			}
			i := h.bucket(NameWords(wire))
			slot := fill.slot(i)
			if slot == nil {
				return fmt.Errorf("%s: DNS table %s: bucket %d overflows", MetaSection, t.Name, i)
			}
			binary.NativeEndian.PutUint32(slot, uint32(len(wire)))
			binary.NativeEndian.PutUint32(slot[4:], v.rule4)
			binary.NativeEndian.PutUint32(slot[8:], v.rule6)
			copy(slot[16:], wire)
		}
		tab.fill(fill)
	}
	return nil
}

// NameWords returns a wire name as the program loads it: 64-bit words,
// the last one zero-padded.
func NameWords(wire []byte) []uint64 {
	buf := make([]byte, (len(wire)+7)/8*8)
	copy(buf, wire)
	ws := make([]uint64, len(buf)/8)
	for i := range ws {
		ws[i] = binary.NativeEndian.Uint64(buf[8*i:])
	}
	return ws
}

// SetGroup is a run of rules tested at once: their constants and the map
// the loader fills with the enabled ones, a table hashed with Hash.
type SetGroup struct {
	Map     string      `json:"map"`
	Members []SetMember `json:"members"`
	Hash    HashTable   `json:"hash"`
	// Keys is the number of constants of a member when the table is
	// keyed by several (a keyed set); 0 means one.
	Keys int `json:"keys,omitempty"`
	// Bounded: a member matches values from its Bound up (a bounded
	// set); a slot holds the key, the bound, then the rule + 1, and a
	// key has a slot for each enabled member whose bound is below those
	// of the key's enabled members before it.
	Bounded bool `json:"bounded,omitempty"`
	// Slots is the number of slots of a bucket of the table, when not
	// HashSlots: a bounded set's key with more rules that can be first
	// than HashSlots takes as many slots of its bucket.
	Slots int `json:"slots,omitempty"`
	// IndexMask, when not 0, makes the set masked: a member matches the
	// values that are its Value under its Mask, a slot holds the value,
	// the mask, then the rule + 1, and a value's bucket is the bucket of
	// the value under IndexMask (which every Mask holds).
	IndexMask uint32 `json:"index_mask,omitempty"`
}

// slots returns the number of slots of a bucket of g's table.
func (g SetGroup) slots() int {
	if g.Slots == 0 {
		return hashSlots
	}
	return g.Slots
}

// SetMember is a rule of a SetGroup and its constant; Rest are the
// constants after the first of a keyed set's member; Bound the least
// value a bounded set's member matches.
type SetMember struct {
	Rule  int      `json:"rule"`
	Value uint32   `json:"value"`
	Rest  []uint32 `json:"rest,omitempty"`
	Bound uint32   `json:"bound,omitempty"`
	Mask  uint32   `json:"mask,omitempty"`
}

// maxSetKeys is the most constants a set's table is keyed by.
const maxSetKeys = 3

// fillSets fills the maps of rules tested at once: each constant (or
// tuple of them) gives its first enabled rule. A slot is the constants,
// then the rule + 1.
func fillSets(spec *ebpf.CollectionSpec, m *Meta, on []bool) error {
	for _, g := range m.Sets {
		tab, ok, err := findTable(spec, g.Map, g.Hash.Bits)
		if !ok {
			return fmt.Errorf("%s: map %s missing from the ELF", MetaSection, g.Map)
		}
		n := max(1, g.Keys)
		slotWords := n + 1 // the key, then the rule + 1
		masked := g.IndexMask != 0
		if g.Bounded || masked {
			slotWords++ // the bound, or the mask, before the rule
		}
		slotSize := 4 * slotWords
		slots := g.slots()
		if err != nil || n > maxSetKeys || slots > MaxBucketSlots || tab.bucketSize != slotSize*slots || g.Hash.Bits < 1 || g.Hash.Bits > maxHashBits ||
			masked && (g.Bounded || n != 1) {
			return fmt.Errorf("%s: map %s: unknown layout", MetaSection, g.Map)
		}
		seen := map[[maxSetKeys + 1]uint32]bool{}
		// Per key of a bounded set, the lowest bound of its members
		// placed so far: a member whose bound is not below it is never
		// the first match.
		low := map[[maxSetKeys]uint32]uint32{}
		fill := newBucketFill(slots, slotSize, slotSize-4)
		for _, mb := range g.Members {
			if len(mb.Rest) != n-1 {
				return fmt.Errorf("%s: map %s: rule %d has %d constants, want %d", MetaSection, g.Map, mb.Rule, 1+len(mb.Rest), n)
			}
			key := [maxSetKeys]uint32{mb.Value}
			copy(key[1:], mb.Rest)
			if mb.Rule < 0 || mb.Rule >= len(on) || !on[mb.Rule] {
				continue
			}
			if g.Bounded {
				if l, ok := low[key]; ok && mb.Bound >= l {
					continue
				}
				low[key] = mb.Bound
			} else {
				// A masked set's key is its value and mask: a later
				// member with both is never the first match.
				k := [maxSetKeys + 1]uint32{key[0], key[1], key[2], mb.Mask}
				if seen[k] {
					continue
				}
				seen[k] = true
			}
			words := make([]uint64, n)
			for k := range words {
				words[k] = uint64(key[k])
			}
			if masked {
				if mb.Mask&g.IndexMask != g.IndexMask || mb.Value&^mb.Mask != 0 {
					return fmt.Errorf("%s: map %s: rule %d: value %#x under mask %#x, not within the index mask %#x", MetaSection, g.Map, mb.Rule, mb.Value, mb.Mask, g.IndexMask)
				}
				words[0] &= uint64(g.IndexMask)
			}
			i := g.Hash.bucket(words)
			slot := fill.slot(i)
			if slot == nil {
				return fmt.Errorf("%s: map %s: bucket %d overflows", MetaSection, g.Map, i)
			}
			for k := range n {
				binary.NativeEndian.PutUint32(slot[4*k:], key[k])
			}
			if g.Bounded {
				binary.NativeEndian.PutUint32(slot[4*n:], mb.Bound)
			}
			if masked {
				binary.NativeEndian.PutUint32(slot[4*n:], mb.Mask)
			}
			binary.NativeEndian.PutUint32(slot[slotSize-4:], uint32(mb.Rule)+1)
		}
		tab.fill(fill)
	}
	return nil
}
