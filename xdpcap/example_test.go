package xdpcap_test

import (
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/xdpcap"
)

// An XDP program built from C with xdpcap.h exposes its hook pinned on
// bpffs, so that it outlives restarts of the program and xdpcap finds it.
func ExampleHookReplacements() {
	spec, err := ebpf.LoadCollectionSpec("example.o") // built with clang from testdata/example.c
	if err != nil {
		fmt.Println(err)
		return
	}
	hook, err := xdpcap.OpenOrCreateHook("/sys/fs/bpf/example_hook")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer hook.Close()
	repl, err := xdpcap.HookReplacements(spec, map[string]*ebpf.Map{"xdpcap_hook": hook})
	if err != nil {
		fmt.Println(err)
		return
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer coll.Close()
	// Attach coll.Programs["xdp_example"] to an interface, then capture
	// with: xdpcap /sys/fs/bpf/example_hook out.pcap
}

// A program generated in Go ends with Exit instead of a plain return.
func ExampleExit() {
	insns := asm.Instructions{
		// Keep the context in a register the exit can copy it from.
		asm.Mov.Reg(asm.R6, asm.R1),
		// ... decide, then leave with XDP_PASS ...
	}
	insns = append(insns, xdpcap.Exit(asm.R6, "xdpcap_hook", xdpcap.Pass)...)
	for _, ins := range insns {
		fmt.Println(ins)
	}
	// Output:
	// MovReg dst: r6 src: r1
	// MovReg dst: r1 src: r6
	// LoadMapPtr dst: r2 fd: 0 <xdpcap_hook>
	// MovImm32 dst: r3 imm: 2
	// Call FnTailCall
	// MovImm32 dst: r0 imm: 2
	// Exit
}

// Capture dropped UDP from a hook into a pcapng file, until 100 packets.
func ExampleStart() {
	filter, err := cbpf.Compile("udp", cbpf.LinkTypeEthernet, 0)
	if err != nil {
		fmt.Println(err)
		return
	}
	hook, err := xdpcap.OpenHook("/sys/fs/bpf/example_hook")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer hook.Close()
	c, err := xdpcap.Start([]*ebpf.Map{hook}, xdpcap.Options{Filter: filter, Actions: []xdpcap.Action{xdpcap.Drop}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	f, err := os.Create("drops.pcapng")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	w, err := xdpcap.NewPcapngWriter(f, layers.LinkTypeEthernet, xdpcap.DefaultSnapLen, []string{"example_hook"})
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 100 {
		p, err := c.Read()
		if errors.Is(err, xdpcap.ErrClosed) {
			break
		}
		if err != nil {
			fmt.Println(err)
			return
		}
		if err := w.WritePacket(p); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := w.Flush(); err != nil {
		fmt.Println(err)
	}
	s, _ := c.Stats()
	fmt.Println(s.Action(xdpcap.Drop))
}

// Record writes a capture to a file until Ctrl-C, then takes the filters
// out, writes what is still buffered and reports the counters: xdpcap's
// live capture in a few lines.
func ExampleRecord() {
	filter, err := cbpf.Compile("udp port 53", cbpf.LinkTypeEthernet, xdpcap.DefaultSnapLen)
	if err != nil {
		fmt.Println(err)
		return
	}
	hooks, names, err := xdpcap.OpenHooks([]string{"/sys/fs/bpf/example_hook"})
	if err != nil {
		fmt.Println(err)
		return
	}
	f, err := os.Create("dns.pcapng")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	w, err := xdpcap.NewWriter(f, xdpcap.OutputFormat(f.Name(), ""), layers.LinkTypeEthernet, xdpcap.DefaultSnapLen, names)
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := xdpcap.Start(hooks, xdpcap.Options{Filter: filter})
	if err != nil {
		fmt.Println(err)
		return
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt)
	res, err := xdpcap.Record(c, w, xdpcap.RecordOptions{Interrupt: sigs})
	if err != nil {
		fmt.Println(err)
	}
	fmt.Println(res.Packets, "packets;", res.Stats)
}

// ParseActions reads xdpcap's -actions list.
func ExampleParseActions() {
	actions, err := xdpcap.ParseActions("drop, XDP_TX")
	fmt.Println(actions, err)
	_, err = xdpcap.ParseActions("drop,drop")
	fmt.Println(err)
	// Output:
	// [XDPDrop XDPTx] <nil>
	// XDP_DROP given twice
}
