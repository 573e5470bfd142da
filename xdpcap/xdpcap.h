/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdpcap.h - expose an xdpcap hook from an XDP program.
 *
 * A hook is a BPF program array with one slot per XDP action (ABORTED 0,
 * DROP 1, PASS 2, TX 3, REDIRECT 4). Instead of `return action;` the
 * program ends with `return xdpcap_exit(ctx, &hook, action);`: a tail call
 * into hook[action]. When nobody captures, the slot is empty, the tail call
 * falls through (about 2 ns) and the program returns the action. While
 * `xdpcap HOOK ...` runs, the slot holds a filter program that copies
 * matching packets to user space and returns the same action.
 *
 * It includes linux/bpf.h and libbpf's bpf/bpf_helpers.h (Debian:
 * libbpf-dev) for SEC, __uint and bpf_tail_call.
 *
 *	#include <linux/bpf.h>
 *	#include <bpf/bpf_helpers.h>
 *	#include "xdpcap.h"
 *
 *	XDPCAP_HOOK(xdpcap_hook);
 *
 *	SEC("xdp")
 *	int prog(struct xdp_md *ctx)
 *	{
 *		if (something)
 *			return xdpcap_exit(ctx, &xdpcap_hook, XDP_DROP);
 *		return xdpcap_exit(ctx, &xdpcap_hook, XDP_PASS);
 *	}
 *
 * Pin the hook when loading (with libbpf: `__uint(pinning,
 * LIBBPF_PIN_BY_NAME)` via XDPCAP_HOOK_PINNED; with Go:
 * xdpcap.OpenOrCreateHook and xdpcap.HookReplacements), then capture with
 * `xdpcap /sys/fs/bpf/HOOK out.pcap 'tcp port 80'`.
 *
 * A program may have several hooks (one per stage, say), and programs may
 * share one. testdata/example.c in the xdpcap package is a complete example.
 *
 * Capture at entry (`xdpcap -entry`) records packets as they arrive, before
 * the program acts on them or rewrites them. It takes two more slots,
 * ENTRY (5) and BODY (6), and two programs built from one body:
 *
 *	static __always_inline int process(struct xdp_md *ctx)
 *	{
 *		... every exit: return xdpcap_exit(ctx, &xdpcap_hook, action);
 *	}
 *
 *	SEC("xdp")
 *	int prog(struct xdp_md *ctx)
 *	{
 *		xdpcap_entry(ctx, &xdpcap_hook);
 *		return process(ctx);
 *	}
 *
 *	SEC("xdp")
 *	int prog_body(struct xdp_md *ctx)
 *	{
 *		return process(ctx);
 *	}
 *
 * The loader puts prog_body in hook[XDPCAP_BODY] (Go: xdpcap.SetBody;
 * libbpf: bpf_map_update_elem(hook_fd, &(__u32){XDPCAP_BODY}, &body_fd,
 * BPF_ANY)) before it attaches prog, and again on every reload; prog is the
 * program it attaches. xdpcap_entry tail calls hook[XDPCAP_ENTRY]: while
 * nobody captures at entry the slot is empty and the call falls through
 * (about 2 ns); during `xdpcap -entry` the slot holds a filter that
 * records the packet and tail calls hook[XDPCAP_BODY], so the packet's
 * fate is prog_body's, which is prog's. (Were the body slot empty, the
 * filter would return XDP_PASS; xdpcap refuses to capture at entry then.)
 * Tail calls count: entry filter, body and exit filter are 2 of the
 * kernel's 33.
 *
 * A quiet twin (optional) saves the empty tail calls too, about 0.7 ns a
 * packet: the same program built without xdpcap_entry and with plain
 * `return action;` exits. The loader puts it in hook[XDPCAP_QUIET] and the
 * program with the hook's calls in hook[XDPCAP_LOUD] (Go: xdpcap.SetQuiet),
 * and attaches, with a BPF link, the quiet one while no capture's filter is
 * in the hook and the loud one while one is (xdpcap.Capturing). xdpcap then
 * swaps the loud program in on every XDP link that runs the quiet one when
 * a capture starts, and back when it ends.
 */
#ifndef XDPCAP_H
#define XDPCAP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* XDPCAP_NUM_ACTIONS is the number of exit slots: one per XDP action. */
#define XDPCAP_NUM_ACTIONS 5
/* XDPCAP_ENTRY is the slot of the entry filter, which xdpcap_entry calls. */
#define XDPCAP_ENTRY 5
/* XDPCAP_BODY is the slot of the program's body, which the loader fills. */
#define XDPCAP_BODY 6
/* XDPCAP_QUIET is the slot of the program's quiet twin, which the loader fills. */
#define XDPCAP_QUIET 7
/* XDPCAP_LOUD is the slot of the program that calls the hook, for the swap. */
#define XDPCAP_LOUD 8
/* XDPCAP_NUM_SLOTS is the number of hook slots. */
#define XDPCAP_NUM_SLOTS 9

/* XDPCAP_HOOK(name) defines a hook map called name. */
#define XDPCAP_HOOK(name)                                        \
	struct {                                                 \
		__uint(type, BPF_MAP_TYPE_PROG_ARRAY);           \
		__uint(max_entries, XDPCAP_NUM_SLOTS);           \
		__uint(key_size, sizeof(__u32));                 \
		__uint(value_size, sizeof(__u32));               \
	} name SEC(".maps")

/*
 * XDPCAP_HOOK_PINNED(name) defines a hook that libbpf pins by name (in
 * /sys/fs/bpf by default, or the loader's pin root) and reuses when it is
 * pinned already.
 */
#define XDPCAP_HOOK_PINNED(name)                                 \
	struct {                                                 \
		__uint(type, BPF_MAP_TYPE_PROG_ARRAY);           \
		__uint(max_entries, XDPCAP_NUM_SLOTS);           \
		__uint(key_size, sizeof(__u32));                 \
		__uint(value_size, sizeof(__u32));               \
		__uint(pinning, LIBBPF_PIN_BY_NAME);             \
	} name SEC(".maps")

/*
 * xdpcap_exit hands the packet to the capture filter in hook[action], if
 * there is one, and otherwise returns action. Return its result from the
 * XDP program: `return xdpcap_exit(ctx, &hook, XDP_PASS);`. A filter
 * always returns the action it was called for, so the packet's fate does
 * not change.
 */
static __always_inline int xdpcap_exit(struct xdp_md *ctx, void *hook, enum xdp_action action)
{
	bpf_tail_call(ctx, hook, action);
	return action;
}

/*
 * xdpcap_entry hands the packet to the entry filter in hook[XDPCAP_ENTRY],
 * if there is one: the filter records it and runs the program's body from
 * hook[XDPCAP_BODY] in place of the rest of this program. Otherwise it
 * returns, and the program goes on. Call it first thing, before the
 * program reads or writes the packet: `xdpcap_entry(ctx, &hook);`.
 */
static __always_inline void xdpcap_entry(struct xdp_md *ctx, void *hook)
{
	bpf_tail_call(ctx, hook, XDPCAP_ENTRY);
}

#endif /* XDPCAP_H */
