package l4drop

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Auto rules are rules the daemon deploys while a rule set runs (l4drop run
// --auto), without clang and without a reload: every built program has a
// table of AutoSlots generic matchers (the map MapAuto), tried after the
// rule set's own rules, so the file's pass rules still win. A matcher is a
// conjunction of up to AutoConds field conditions; deploying one is a map
// update, microseconds. While the table is empty a packet pays one load
// and one branch.
//
// Auto rule k counts in the counters map at index len(Meta.Rules)+1+k and
// samples name it with rule index AutoRuleBase(len(Meta.Rules))+k.

// MapAuto is the map of auto rules in a built ELF; MapAutoCount the global
// holding how many slots, from the first, the program tries.
const (
	MapAuto      = "l4drop_auto"
	MapAutoCount = ".data.l4auto" // the section of the l4drop_auto_n global
)

// AutoSlots is the number of auto rules a program holds; AutoConds the
// conditions of one.
const (
	AutoSlots = 16
	AutoConds = 8
)

// AutoState says what an auto rule slot does.
type AutoState uint32

// Auto rule states.
const (
	AutoOff     AutoState = 0 // slot unused: never matches
	AutoDrop    AutoState = 1 // matching packets are dropped
	AutoMonitor AutoState = 2 // counted and sampled, then evaluation goes on
)

// AutoBase is where a condition's offset counts from.
type AutoBase uint8

// Condition bases. A condition whose field lies (even in part) beyond the
// packet, or whose base does not exist in the packet, is false: as in
// cBPF, a load past the end is no match.
const (
	// BaseIP: the IP header's first byte.
	BaseIP AutoBase = 0
	// BaseL4: the transport header: IPv4 at IHL*4 (only in packets that
	// are not non-first fragments, as pcap's tcp[]/udp[] do), IPv6 at 40.
	BaseL4 AutoBase = 1
	// BasePayload: after the transport header: UDP 8 bytes, TCP data
	// offset*4; the rule's Proto must be 6 or 17.
	BasePayload AutoBase = 2
	// BaseLen: the field is the packet's length from the IP header on
	// (Off and Size are ignored).
	BaseLen AutoBase = 3
)

// AutoCond is one condition: the big-endian field of Size bytes (1, 2 or 4)
// at Off from Base, masked with Mask, lies in [Min, Max].
type AutoCond struct {
	Base AutoBase
	Size uint8
	Off  uint16
	Mask uint32
	Min  uint32
	Max  uint32
}

// AutoRule is one slot of MapAuto.
type AutoRule struct {
	State AutoState
	// Family is 4 or 6; Proto the IP protocol (IPv4 protocol field, IPv6
	// next header of the fixed header), 0 for any.
	Family uint8
	Proto  uint8
	Conds  []AutoCond
}

// autoRuleSize is the size of struct l4_auto_rule in AutoC.
const autoRuleSize = 8 + AutoConds*16

// ErrAutoRule is returned for auto rules the program cannot hold.
var ErrAutoRule = errors.New("invalid auto rule")

// Validate checks that the program can hold r.
func (r *AutoRule) Validate() error {
	if r.State > AutoMonitor {
		return fmt.Errorf("%w: state %d", ErrAutoRule, r.State)
	}
	if r.Family != 4 && r.Family != 6 {
		return fmt.Errorf("%w: family %d (want 4 or 6)", ErrAutoRule, r.Family)
	}
	if len(r.Conds) > AutoConds {
		return fmt.Errorf("%w: %d conditions, at most %d", ErrAutoRule, len(r.Conds), AutoConds)
	}
	for i, c := range r.Conds {
		switch {
		case c.Base > BaseLen:
			return fmt.Errorf("%w: condition %d: base %d", ErrAutoRule, i, c.Base)
		case c.Base != BaseLen && c.Size != 1 && c.Size != 2 && c.Size != 4:
			return fmt.Errorf("%w: condition %d: size %d (want 1, 2 or 4)", ErrAutoRule, i, c.Size)
		case c.Base == BasePayload && r.Proto != 6 && r.Proto != 17:
			return fmt.Errorf("%w: condition %d: payload offsets need TCP or UDP", ErrAutoRule, i)
		case c.Min > c.Max:
			return fmt.Errorf("%w: condition %d: min %d > max %d", ErrAutoRule, i, c.Min, c.Max)
		}
	}
	return nil
}

// MarshalBinary encodes r as the program's struct l4_auto_rule.
func (r *AutoRule) MarshalBinary() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, autoRuleSize)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(r.State))
	b[4], b[5], b[6] = r.Family, r.Proto, uint8(len(r.Conds))
	for i, c := range r.Conds {
		o := 8 + 16*i
		b[o], b[o+1] = uint8(c.Base), c.Size
		ne.PutUint16(b[o+2:], c.Off)
		ne.PutUint32(b[o+4:], c.Mask)
		ne.PutUint32(b[o+8:], c.Min)
		ne.PutUint32(b[o+12:], c.Max)
	}
	return b, nil
}

// UnmarshalBinary decodes struct l4_auto_rule.
func (r *AutoRule) UnmarshalBinary(b []byte) error {
	if len(b) != autoRuleSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrAutoRule, len(b), autoRuleSize)
	}
	ne := binary.NativeEndian
	*r = AutoRule{State: AutoState(ne.Uint32(b)), Family: b[4], Proto: b[5]}
	n := int(b[6])
	if n > AutoConds {
		return fmt.Errorf("%w: %d conditions", ErrAutoRule, n)
	}
	for i := 0; i < n; i++ {
		o := 8 + 16*i
		r.Conds = append(r.Conds, AutoCond{
			Base: AutoBase(b[o]), Size: b[o+1], Off: ne.Uint16(b[o+2:]),
			Mask: ne.Uint32(b[o+4:]), Min: ne.Uint32(b[o+8:]), Max: ne.Uint32(b[o+12:]),
		})
	}
	return nil
}

// Expr renders r as a pcap-filter expression over the IP packet (link type
// RAW) that matches the same packets, for status output and for pasting
// into a rules file.
func (r *AutoRule) Expr() string {
	var parts []string
	ipv := "ip"
	if r.Family == 6 {
		ipv = "ip6"
	}
	parts = append(parts, ipv)
	if r.Proto != 0 {
		if r.Family == 6 {
			parts = append(parts, fmt.Sprintf("ip6[6] = %d", r.Proto))
		} else {
			parts = append(parts, fmt.Sprintf("ip proto %d", r.Proto))
		}
	}
	// tcp[] and udp[] test for a first fragment themselves; ip[] at the
	// transport header must say it.
	if r.Family == 4 && r.Proto != 6 && r.Proto != 17 {
		for _, c := range r.Conds {
			if c.Base == BaseL4 || c.Base == BasePayload {
				parts = append(parts, "ip[6:2] & 0x1fff = 0")
				break
			}
		}
	}
	for _, c := range r.Conds {
		var field string
		switch c.Base {
		case BaseIP:
			field = fmt.Sprintf("%s[%d:%d]", ipv, c.Off, c.Size)
		case BaseL4:
			field = l4Field(r, fmt.Sprint(c.Off), c.Size)
		case BasePayload:
			field = l4Field(r, payloadOffset(r, c.Off), c.Size)
		case BaseLen:
			field = "len"
		}
		if c.Base != BaseLen && c.Mask != fullMask(c.Size) {
			field = fmt.Sprintf("(%s & 0x%x)", field, c.Mask)
		}
		if c.Min == c.Max {
			parts = append(parts, fmt.Sprintf("%s = %d", field, c.Min))
		} else {
			parts = append(parts, fmt.Sprintf("%s >= %d and %s <= %d", field, c.Min, field, c.Max))
		}
	}
	return strings.Join(parts, " and ")
}

// payloadOffset is the offset, in the transport header, of byte off of
// the payload.
func payloadOffset(r *AutoRule, off uint16) string {
	if r.Proto == 17 {
		return fmt.Sprint(8 + int(off))
	}
	if r.Family == 6 {
		return fmt.Sprintf("((ip6[52] >> 4) * 4) + %d", off)
	}
	return fmt.Sprintf("((tcp[12] >> 4) * 4) + %d", off)
}

// l4Field names a transport-header field as pcap-filter does: tcp[] and
// udp[] for IPv4 (which skip the IP options and fail on non-first
// fragments), ip6[40 + off] for IPv6.
func l4Field(r *AutoRule, off string, size uint8) string {
	if r.Family == 6 {
		return fmt.Sprintf("ip6[40 + %s:%d]", off, size)
	}
	switch r.Proto {
	case 6:
		return fmt.Sprintf("tcp[%s:%d]", off, size)
	case 17:
		return fmt.Sprintf("udp[%s:%d]", off, size)
	}
	return fmt.Sprintf("ip[((ip[0] & 0xf) * 4) + %s:%d]", off, size)
}

func fullMask(size uint8) uint32 {
	if size >= 4 {
		return 0xffffffff
	}
	return 1<<(8*uint32(size)) - 1
}

// AutoRuleBase is the sample rule index of auto slot 0 in a rule set of
// nrules rules (after the rules and the no-rule counter).
func AutoRuleBase(nrules int) uint32 { return uint32(nrules) + 1 }

// AutoC is the C a built program includes for its auto rules: the table,
// its length, and l4_auto, which returns the first matching slot or
// L4_AUTO_NONE. ip points at the IP header, fam is 4 or 6.
const AutoC = `
#define L4_AUTO_SLOTS 16
#define L4_AUTO_CONDS 8
#define L4_AUTO_NONE 0xffffffffu

struct l4_auto_cond {
	uint8_t base; /* 0 IP header, 1 transport header, 2 payload, 3 length */
	uint8_t size; /* 1, 2 or 4 */
	uint16_t off;
	__u32 mask;
	__u32 min;
	__u32 max;
};

struct l4_auto_rule {
	__u32 state; /* 0 off, 1 drop, 2 monitor */
	uint8_t family;
	uint8_t proto;
	uint8_t ncond;
	uint8_t pad;
	struct l4_auto_cond cond[L4_AUTO_CONDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L4_AUTO_SLOTS);
	__type(key, __u32);
	__type(value, struct l4_auto_rule);
} l4drop_auto SEC(".maps");

/* How many slots, from the first, hold rules: the daemon keeps it exact,
 * so a set without auto rules pays one load and a branch. */
__u32 l4drop_auto_n SEC(".data.l4auto") = 0;
`
