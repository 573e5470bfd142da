package xdpcap

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
	"github.com/l4drop/l4drop/xdpcap/xdpcaptest"
)

// goProgram returns an XDP program built in Go with Exit: it drops IPv4
// UDP to port 9, bounces IPv4 UDP to port 7 back out (XDP_TX, MACs
// swapped) and passes everything else, every exit through hook.
func goProgram(t testing.TB, hook *ebpf.Map) *ebpf.Program {
	return goProgramHooked(t, hook, true)
}

// goProgramHooked is goProgram, with plain returns instead of the hook's
// exit sequence unless hooked.
func goProgramHooked(t testing.TB, hook *ebpf.Map, hooked bool) *ebpf.Program {
	return goProgramFlags(t, hook, hooked, 0)
}

// goProgramFlags is goProgramHooked loaded with the given program flags.
func goProgramFlags(t testing.TB, hook *ebpf.Map, hooked bool, flags uint32) *ebpf.Program {
	t.Helper()
	return loadGoProgram(t, "test_go_prog", goProgramInsns(hooked), hook, flags)
}

// loadGoProgram loads insns as an XDP program with hook as its map "hook".
func loadGoProgram(t testing.TB, name string, insns asm.Instructions, hook *ebpf.Map, flags uint32) *ebpf.Program {
	t.Helper()
	if err := insns.AssociateMap("hook", hook); err != nil && !errors.Is(err, asm.ErrUnreferencedSymbol) {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, Instructions: insns, License: "GPL", Flags: flags})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// goProgramInsns are goProgramHooked's instructions, its hook map named
// "hook".
func goProgramInsns(hooked bool) asm.Instructions {
	const (
		ctx  = asm.R6
		data = asm.R7
		end  = asm.R8
	)
	insns := asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		asm.LoadMem(data, ctx, 0, asm.Word),
		asm.LoadMem(end, ctx, 4, asm.Word),
		asm.Mov.Reg(asm.R1, data),
		asm.Add.Imm(asm.R1, 14+20+8),
		asm.JGT.Reg(asm.R1, end, "pass"),
		asm.LoadMem(asm.R1, data, 12, asm.Half),
		asm.JNE.Imm(asm.R1, 0x0008, "pass"), // ETH_P_IP, network order
		asm.LoadMem(asm.R1, data, 14, asm.Byte),
		asm.JNE.Imm(asm.R1, 0x45, "pass"), // IPv4 without options
		asm.LoadMem(asm.R1, data, 14+9, asm.Byte),
		asm.JNE.Imm(asm.R1, 17, "pass"),
		asm.LoadMem(asm.R1, data, 14+20+2, asm.Half),
		asm.JEq.Imm(asm.R1, 0x0900, "drop"), // port 9, network order
		asm.JEq.Imm(asm.R1, 0x0700, "tx"),
	}
	exitSeq := func(a Action) asm.Instructions {
		if !hooked {
			return asm.Instructions{asm.Mov.Imm(asm.R0, int32(a)), asm.Return()}
		}
		return Exit(ctx, "hook", a)
	}
	exit := func(label string, a Action) asm.Instructions {
		e := exitSeq(a)
		e[0] = e[0].WithSymbol(label)
		return e
	}
	insns = append(insns, exit("pass", Pass)...)
	insns = append(insns, exit("drop", Drop)...)
	// Swap the MAC addresses: 6 bytes as a word and a half each.
	insns = append(insns,
		asm.LoadMem(asm.R1, data, 0, asm.Word).WithSymbol("tx"),
		asm.LoadMem(asm.R2, data, 4, asm.Half),
		asm.LoadMem(asm.R3, data, 6, asm.Word),
		asm.LoadMem(asm.R4, data, 10, asm.Half),
		asm.StoreMem(data, 0, asm.R3, asm.Word),
		asm.StoreMem(data, 4, asm.R4, asm.Half),
		asm.StoreMem(data, 6, asm.R1, asm.Word),
		asm.StoreMem(data, 10, asm.R2, asm.Half),
	)
	return append(insns, exitSeq(TX)...)
}

// describe summarizes a captured packet as "hook action proto detail".
func describe(p Packet) string {
	pkt := gopacket.NewPacket(p.Data, layers.LayerTypeEthernet, gopacket.NoCopy)
	what := "other"
	if u, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
		what = fmt.Sprintf("udp:%d", u.DstPort)
	} else if ic, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		what = fmt.Sprintf("icmp:%d", ic.TypeCode.Type())
	}
	return fmt.Sprintf("%d %v %s", p.Hook, p.Action, what)
}

// TestLive captures, through one capture on two hooks, the traffic of a C
// program (server side, xdpcap.h) and a Go program (client side, Exit) on
// a veth pair that real packets cross.
func TestLive(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	dir := fixture.BPFFS(t)

	serverHook, err := CreateHook(filepath.Join(dir, "server"))
	if err != nil {
		t.Fatal(err)
	}
	defer serverHook.Close()
	clientHook, err := CreateHook(filepath.Join(dir, "client"))
	if err != nil {
		t.Fatal(err)
	}
	defer clientHook.Close()
	fixture.AttachXDP(t, lab.Server, lab.ServerIndex, xdpcaptest.LoadExample(t, serverHook))
	fixture.AttachXDP(t, lab.Client, lab.ClientIndex, goProgram(t, clientHook))

	// A listener, so that UDP to 5000 draws no ICMP errors.
	fixture.ListenUDP(t, lab.Server, fixture.ServerIPv4, 5000)

	filter, err := cbpf.Compile("udp or icmp", cbpf.LinkTypeEthernet, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start([]*ebpf.Map{serverHook, clientHook}, Options{Filter: filter, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 9, 3)    // server: drop
	fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 5000, 2) // server: pass
	if n := fixture.Ping(t, lab.Client, fixture.ServerIPv4, 2); n != 2 {
		// The C program answers them with XDP_TX.
		t.Errorf("%d echo replies, want 2", n)
	}
	fixture.SendUDP(t, lab.Server, fixture.ClientIPv4, 9, 3) // client: drop
	fixture.SendUDP(t, lab.Server, fixture.ClientIPv4, 7, 2) // client: tx, then server: pass
	// A TCP SYN the filter does not match: seen, not captured.
	lab.Client.Do(func() error {
		c, err := net.DialTimeout("tcp4", fixture.ServerIPv4+":80", 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)

	stats, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(); err != nil {
		t.Fatal(err)
	}
	hookEmpty(t, serverHook)
	hookEmpty(t, clientHook)
	pkts := readAll(t, c)

	count := map[string]int{}
	for _, p := range pkts {
		count[describe(p)]++
		if p.Length != len(p.Data) || p.CPU < 0 || p.Time.IsZero() {
			t.Errorf("packet %s: length %d, captured %d, CPU %d, time %v", describe(p), p.Length, len(p.Data), p.CPU, p.Time)
		}
	}
	want := map[string]int{
		"0 XDPDrop udp:9":    3,
		"0 XDPPass udp:5000": 2,
		"0 XDPTx icmp:0":     2, // captured as the program left it: an echo reply
		"1 XDPPass icmp:0":   2,
		"1 XDPDrop udp:9":    3,
		"1 XDPTx udp:7":      2,
		"0 XDPPass udp:7":    2,
	}
	if fmt.Sprint(sorted(count)) != fmt.Sprint(sorted(want)) {
		t.Errorf("captured\n%s\nwant\n%s", sorted(count), sorted(want))
	}
	// Seen counts every packet of the action, matched only udp or icmp.
	for _, tc := range []struct {
		hook          int
		a             Action
		seen, matched uint64
	}{
		{0, Drop, 3, 3}, {0, TX, 2, 2}, {1, Drop, 3, 3}, {1, TX, 2, 2},
		{0, Aborted, 0, 0}, {0, Redirect, 0, 0},
	} {
		got := stats.Hooks[tc.hook][tc.a]
		if got.Seen != tc.seen || got.Matched != tc.matched || got.Lost != 0 {
			t.Errorf("hook %d %v: %+v, want seen %d matched %d lost 0", tc.hook, tc.a, got, tc.seen, tc.matched)
		}
	}
	if p := stats.Hooks[0][Pass]; p.Matched != 4 || p.Seen <= p.Matched {
		t.Errorf("server pass counters %+v: want 4 matched and the TCP SYN seen too", p)
	}
}

func sorted(m map[string]int) string {
	var lines []string
	for k, v := range m {
		lines = append(lines, fmt.Sprintf("%s ×%d", k, v))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestLiveMultiBuffer sends jumbo frames over a veth with a 9000-byte MTU
// to a multi-buffer (BPF_F_XDP_HAS_FRAGS) program: the capture gets every
// packet whole, fragments included, or the first snap length bytes.
func TestLiveMultiBuffer(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	for _, ns := range []*netns.NS{lab.Client, lab.Server} {
		if err := ns.IP("link", "set", "veth0", "mtu", "9000"); err != nil {
			t.Fatal(err)
		}
	}
	hook, err := NewHook()
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	fixture.AttachXDP(t, lab.Server, lab.ServerIndex, goProgramFlags(t, hook, true, bpfFXDPHasFrags))

	for _, snap := range []int{0, 5000} {
		c, err := Start([]*ebpf.Map{hook}, Options{Actions: []Action{Drop}, SnapLen: snap, PollInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		const payload = 8000
		err = lab.Client.Do(func() error {
			conn, err := net.Dial("udp4", net.JoinHostPort(fixture.ServerIPv4, "9"))
			if err != nil {
				return err
			}
			defer conn.Close()
			b := make([]byte, payload)
			for i := range b {
				b[i] = byte(i * 7)
			}
			_, err = conn.Write(b)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if err := c.Detach(); err != nil {
			t.Fatal(err)
		}
		pkts := readAll(t, c)
		c.Close()
		if len(pkts) != 1 {
			t.Fatalf("snap %d: captured %d packets, want 1", snap, len(pkts))
		}
		p := pkts[0]
		const frame = 14 + 20 + 8 + payload
		wantCap := frame
		if snap != 0 {
			wantCap = snap
		}
		if p.Length != frame || len(p.Data) != wantCap {
			t.Fatalf("snap %d: length %d, captured %d; want %d, %d", snap, p.Length, len(p.Data), frame, wantCap)
		}
		for i := 42; i < len(p.Data); i++ {
			if p.Data[i] != byte((i-42)*7) {
				t.Fatalf("snap %d: captured byte %d is %#x, want %#x", snap, i, p.Data[i], byte((i-42)*7))
			}
		}
	}
}
