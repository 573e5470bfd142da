// Package xdpcap makes the packets of XDP programs visible: what they pass,
// drop, bounce (XDP_TX) or redirect, with the action, filtered with a
// tcpdump expression.
//
// # Hooks
//
// An XDP program exposes a hook: a program array with one slot per XDP
// action and two for capture at entry ([HookMapSpec]), usually pinned on
// bpffs ([OpenOrCreateHook]).
// Every exit of the program is a tail call into hook[action] that falls
// back to returning the action: xdpcap_exit in C ([Header], xdpcap.h), or
// the instructions of [Exit] in programs generated in Go. While nobody
// captures, the slots are empty and a tail call into one costs about 2 ns.
// Programs built from an ELF file get a pinned hook through
// [HookReplacements]. A program may have several hooks, and programs may
// share one.
//
// # Capture at entry
//
// A hook has two more slots, EntrySlot (5) and BodySlot (6), for capturing
// packets as they enter the program, before it acts on them or rewrites
// them. A program that supports it is built twice from one body: the
// program to attach starts with a tail call into hook[EntrySlot]
// (xdpcap_entry in C, [Enter] in Go), which falls through while the slot
// is empty, for the cost of one empty tail call; the body alone, a second
// program, goes in hook[BodySlot], put there by the loader ([SetBody])
// before it attaches the program and on every reload. A capture with
// Options.Entry puts a filter in hook[EntrySlot] that records the packet
// (with the pseudo-action [Entry]) and tail calls hook[BodySlot], so the
// body decides the packet's fate; it refuses hooks with no body
// ([ErrNoEntry]). xdpcap.h spells the contract out in C.
//
// # The quiet twin
//
// Empty tail calls are cheap, not free: a program that makes none spends
// about 0.7 ns a packet less. A program may come with a quiet twin, itself
// built without the hook's calls: the loader puts both in the hook
// ([SetQuiet]: QuietSlot 7, LoudSlot 8) and attaches the quiet one with a
// BPF link while nobody captures ([Capturing]). [Start] then makes every
// XDP link that runs the quiet twin run the loud program once the filters
// are in, and [Capture.Detach] (or [Clear]) puts the twin back, each swap
// a compare and exchange on the link.
//
// # Capturing
//
// [Start] compiles a cBPF filter (from libpcap, see package cbpf) with
// cbpfc into one filter program per action and puts them in the hooks'
// slots. Each counts the packets it sees and matches, copies matching ones
// (up to the snap length, every fragment of a multi-buffer packet) with the
// action, CPU, length and a kernel timestamp into a BPF ring buffer (or a
// perf event array), and returns its own action, so the packet's fate is
// unchanged. [Capture.Read] returns the packets, [PcapWriter] and
// [PcapngWriter] write them; pcapng records each packet's hook and action.
//
// A capture holds a lock per hook (a flock in [LockDir]); a process killed
// with SIGKILL loses it, and the next capture on the hook, or [Clear],
// removes the filters it left.
//
// [Record] runs a capture into a writer until a count of packets or an
// interrupt, and drains it, as the xdpcap command does.
//
// [TestFilter] runs the same filter program over packets with
// BPF_PROG_TEST_RUN, for testing a filter on a capture file offline;
// package filter (xdpcap/filter) runs it over a whole capture file.
package xdpcap
