package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/lab"
)

// PacketFloor is the shape name of the per-packet section's reference
// row: floorC's port rule, not L4Drop.
const PacketFloor = "floor"

// PacketFloorDNS is the shape name of the per-packet section's second
// reference row: floorC's DNS wildcard rule, not L4Drop.
const PacketFloorDNS = "floor-dns"

// floorC is the least a filter that counts per rule, as L4Drop does, can
// do for one port rule (floor_port) and for one DNS wildcard rule
// (floor_name), written by hand: untagged Ethernet and IPv4 only, the
// protocol, the fragment offset, the header length and the port; for the
// name, the first label's length and the labels after it compared as
// whole words; the rule's counter (packets and bytes, per CPU, in a map as
// L4Drop's, whose element is looked up as the program starts, as
// L4Drop's is); the sampling test (a threshold in a global, 0: off). No
// VLAN tags, no IPv6, no judging of malformed headers as libpcap does, no
// hook, no other rule: floors under L4Drop's one-rule rows, which do all
// of that. FLOOR_PORT is the port rule's port, FLOOR_REST_LEN and
// FLOOR_REST_TEST the name rule's labels after the first (floorSource).
const floorC = `
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define LD64(p, off) (*(const u64 *)((p) + (off)))

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static u32 (*bpf_get_prandom_u32)(void) = (void *)7;

struct counter {
	u64 packets, bytes;
};

struct counters {
	struct counter c[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct counters);
} counters SEC(".maps");

volatile u64 sample_threshold SEC(".data.cfg") = 0;

static __always_inline struct counters *counters_of_cpu(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&counters, &zero);
}

/* The UDP header of an untagged IPv4 packet's first fragment, or 0. */
static __always_inline const u8 *udp_of(const u8 *data, const u8 *end)
{
	const u8 *ip = data + 14;
	if (ip + 20 > end || *(const u16 *)(data + 12) != __builtin_bswap16(0x0800) || ip[9] != 17 ||
	    ((ip[6] << 8 | ip[7]) & 0x1fff))
		return 0;
	return ip + (ip[0] & 15) * 4;
}

static __always_inline int finish(struct counters *cs, const u8 *data, const u8 *end, u32 rule)
{
	if (cs) {
		struct counter *c = &cs->c[rule];
		c->packets++;
		c->bytes += end - data;
	}
	u64 t = sample_threshold;
	if (t && bpf_get_prandom_u32() < t)
		return XDP_ABORTED;
	return rule == 0 ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int floor_port(struct xdp_md *ctx)
{
	const u8 *data = (const u8 *)(long)ctx->data, *end = (const u8 *)(long)ctx->data_end;
	struct counters *cs = counters_of_cpu();
	const u8 *udp = udp_of(data, end);
	u32 rule = 1;
	if (udp && udp + 4 <= end && (udp[2] << 8 | udp[3]) == FLOOR_PORT)
		rule = 0;
	return finish(cs, data, end, rule);
}

SEC("xdp")
int floor_name(struct xdp_md *ctx)
{
	const u8 *data = (const u8 *)(long)ctx->data, *end = (const u8 *)(long)ctx->data_end;
	struct counters *cs = counters_of_cpu();
	const u8 *udp = udp_of(data, end);
	u32 rule = 1;
	/* The first question name of a query to port 53, after the UDP
	 * header and the DNS header's 12 bytes. */
	if (udp && udp + 21 <= end && *(const u16 *)(udp + 2) == __builtin_bswap16(53)) {
		u32 first = udp[20];
		const u8 *rest = udp + 21 + first;
		if (first - 1 < 63 && rest + FLOOR_REST_LEN <= end && FLOOR_REST_TEST(rest))
			rule = 0;
	}
	return finish(cs, data, end, rule);
}

char LICENSE[] SEC("license") = "GPL";
`

// floorPort is the port of the per-packet section's port floor: the port
// rows' matching packet's.
const floorPort = 1000

// floorZone is the zone of the per-packet section's name floor: the
// one-rule wildcard row's (`*.zone0000.example`).
const floorZone = "zone0000.example"

// floorSource is floorC with its port rule's port and its name rule's zone
// (the labels after the first, 8 to 255 bytes in wire format), compared
// in loads of 8 bytes: the last one overlapping the one before, so that
// one bounds check covers them.
func floorSource(port int, zone string) (string, error) {
	wire := fixture.DNSName(zone)
	if len(wire) < 8 || len(wire) > 255 {
		return "", fmt.Errorf("floor: zone %q: %d bytes in wire format, want 8 to 255", zone, len(wire))
	}
	var tests []string
	for off := 0; off < len(wire); off += 8 {
		off = min(off, len(wire)-8)
		tests = append(tests, fmt.Sprintf("LD64(r, %d) == %#xULL", off, binary.LittleEndian.Uint64(wire[off:])))
	}
	return fmt.Sprintf("#define FLOOR_PORT %d\n#define FLOOR_REST_LEN %d\n#define FLOOR_REST_TEST(r) (%s)\n",
		port, len(wire), strings.Join(tests, " && ")) + floorC, nil
}

// floorCase is the port floor's case: the port rows' packets (the
// matching one to UDP port floorPort, as the floor's rule).
func floorCase() (PacketCase, error) {
	c, err := NewPacketCase("port", 1)
	if err != nil {
		return c, err
	}
	c.Shape, c.YAML = PacketFloor, ""
	return c, nil
}

// floorDNSCase is the name floor's case: the one-rule wildcard row's
// packets (the matching one a query under floorZone).
func floorDNSCase() (PacketCase, error) {
	c, err := NewPacketCase("dnswild", 1)
	if err != nil {
		return c, err
	}
	c.Shape, c.YAML = PacketFloorDNS, ""
	return c, nil
}

// newFloor builds and loads floorC with its rules for UDP port port and
// for names under zone.
func newFloor(ctx context.Context, port int, zone string) (*ebpf.Collection, error) {
	src, err := floorSource(port, zone)
	if err != nil {
		return nil, err
	}
	obj, err := clang.Compile(ctx, src, "-mcpu=v3")
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	return coll, nil
}

// Floor is the drop-rate row of floorC with its rule for UDP port port
// (the flood's 53): what a filter that counts per rule costs at the least,
// measured in the same rounds as L4Drop's port rule, the same rule.
func Floor(port int) Filter {
	return floorFilter(fmt.Sprintf("for reference, not L4Drop: udp dst port %d by hand (floorC)", port), KindFloor, "floor_port", port, floorZone)
}

// FloorDNS is the drop-rate row of floorC with its rule for the flood's
// names (attackPattern): what a filter that counts per rule costs at the
// least for one DNS wildcard rule, measured in the same rounds as
// L4Drop's DNS rules.
func FloorDNS() Filter {
	return floorFilter(fmt.Sprintf("for reference, not L4Drop: %s by hand (floorC)", attackPattern), KindFloorDNS, "floor_name",
		PortRulePort, strings.TrimPrefix(attackPattern, "*."))
}

func floorFilter(name string, kind Kind, prog string, port int, zone string) Filter {
	return Filter{Name: name, Kind: kind,
		Setup: func(l *lab.Lab) (func(), error) {
			coll, err := newFloor(context.Background(), port, zone)
			if err != nil {
				return nil, err
			}
			lk, err := l.AttachServer(coll.Programs[prog])
			if err != nil {
				coll.Close()
				return nil, fmt.Errorf("floor: %w", err)
			}
			return func() { lk.Close(); coll.Close() }, nil
		}}
}
