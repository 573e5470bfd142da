// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A complete XDP program that exposes an xdpcap hook. The xdpcap tests build
 * it with
 *
 *	clang -O2 -g -target bpf -I.. -c example.c -o example.o
 *
 * It drops UDP to port 9 (discard), answers ICMP echo requests itself by
 * bouncing them back with XDP_TX (addresses and type swapped), and passes
 * everything else. Every exit goes through the hook, so xdpcap sees all of
 * them, each with its action.
 *
 * It supports capture at entry too: xdp_example, the program to attach,
 * starts with xdpcap_entry, and xdp_example_body, the same program without
 * it, goes in the hook's body slot (xdpcap.SetBody) when it is loaded.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdpcap.h"

/*
 * The ICMP header, declared here: linux/icmp.h pulls in glibc's socket
 * headers, which a BPF target build cannot use without 32-bit stubs.
 */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

XDPCAP_HOOK(xdpcap_hook);

/* Incremental checksum update for a 16-bit field changing from old to new (RFC 1624). */
static __always_inline __u16 csum_replace(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static __always_inline int process(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return xdpcap_exit(ctx, &xdpcap_hook, XDP_PASS);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return xdpcap_exit(ctx, &xdpcap_hook, XDP_PASS);

	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end)
			return xdpcap_exit(ctx, &xdpcap_hook, XDP_ABORTED);
		if (udp->dest == bpf_htons(9))
			return xdpcap_exit(ctx, &xdpcap_hook, XDP_DROP);
	}

	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = (void *)(ip + 1);
		unsigned char mac[ETH_ALEN];
		__be32 addr;

		if ((void *)(icmp + 1) > data_end)
			return xdpcap_exit(ctx, &xdpcap_hook, XDP_ABORTED);
		if (icmp->type == ICMP_ECHO && icmp->code == 0) {
			__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
			__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
			__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
			addr = ip->saddr;
			ip->saddr = ip->daddr;
			ip->daddr = addr;
			icmp->type = ICMP_ECHOREPLY;
			icmp->checksum = csum_replace(icmp->checksum, bpf_htons(ICMP_ECHO << 8),
						      bpf_htons(ICMP_ECHOREPLY << 8));
			return xdpcap_exit(ctx, &xdpcap_hook, XDP_TX);
		}
	}

	return xdpcap_exit(ctx, &xdpcap_hook, XDP_PASS);
}

SEC("xdp")
int xdp_example(struct xdp_md *ctx)
{
	xdpcap_entry(ctx, &xdpcap_hook);
	return process(ctx);
}

SEC("xdp")
int xdp_example_body(struct xdp_md *ctx)
{
	return process(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
