package bench

import (
	"bytes"
	"context"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/lab"
)

// PacketFloor is the shape name of the per-packet section's reference
// row: floorC, not L4Drop.
const PacketFloor = "floor"

// floorC is the least a filter that counts per rule, as L4Drop does, can
// do for one port rule, written by hand: untagged Ethernet and IPv4 only,
// the protocol, the fragment offset, the header length and the port; the
// rule's counter (packets and bytes, per CPU, in a map as L4Drop's, whose
// element is looked up as the program starts, as L4Drop's is); the
// sampling test (a threshold in a global, 0: off). No VLAN tags, no IPv6,
// no judging of malformed headers as libpcap does, no hook, no other
// rule: a floor under L4Drop's one-rule rows, which do all of that.
// FLOOR_PORT is the rule's port (floorSource).
const floorC = `
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

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

SEC("xdp")
int floor_port(struct xdp_md *ctx)
{
	const u8 *data = (const u8 *)(long)ctx->data, *end = (const u8 *)(long)ctx->data_end;
	const u8 *ip = data + 14;
	u32 rule = 1, zero = 0;
	struct counters *cs = bpf_map_lookup_elem(&counters, &zero);
	if (ip + 20 <= end && *(const u16 *)(data + 12) == __builtin_bswap16(0x0800) && ip[9] == 17 &&
	    !((ip[6] << 8 | ip[7]) & 0x1fff)) {
		const u8 *udp = ip + (ip[0] & 15) * 4;
		if (udp + 4 <= end && (udp[2] << 8 | udp[3]) == FLOOR_PORT)
			rule = 0;
	}
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

char LICENSE[] SEC("license") = "GPL";
`

// floorPort is the port of the per-packet section's floor: the port rows'
// matching packet's.
const floorPort = 1000

// floorSource is floorC with its rule's port.
func floorSource(port int) string {
	return fmt.Sprintf("#define FLOOR_PORT %d\n", port) + floorC
}

// floorCase is the reference row's case: the port rows' packets (the
// matching one to UDP port floorPort, as the floor's rule).
func floorCase() (PacketCase, error) {
	c, err := NewPacketCase("port", 1)
	if err != nil {
		return c, err
	}
	c.Shape, c.YAML = PacketFloor, ""
	return c, nil
}

// newFloor builds and loads floorC with its rule for UDP port port.
func newFloor(ctx context.Context, port int) (*ebpf.Collection, error) {
	obj, err := clang.Compile(ctx, floorSource(port), "-mcpu=v3")
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
	return Filter{Name: fmt.Sprintf("for reference, not L4Drop: udp dst port %d by hand (floorC)", port), Kind: KindFloor,
		Setup: func(l *lab.Lab) (func(), error) {
			coll, err := newFloor(context.Background(), port)
			if err != nil {
				return nil, err
			}
			lk, err := l.AttachServer(coll.Programs["floor_port"])
			if err != nil {
				coll.Close()
				return nil, fmt.Errorf("floor: %w", err)
			}
			return func() { lk.Close(); coll.Close() }, nil
		}}
}
