package xdpcap

import (
	"bytes"
	"errors"
	"net"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/xdpcap/xdpcaptest"
)

// goEntryPrograms returns goProgram starting with Enter, to attach, and
// goProgram itself as its body, which it puts in hook's body slot.
func goEntryPrograms(t testing.TB, hook *ebpf.Map) *ebpf.Program {
	t.Helper()
	enter, err := Enter(asm.R6, "hook")
	if err != nil {
		t.Fatal(err)
	}
	prog := loadGoProgram(t, "test_go_entry", append(enter, goProgramInsns(true)...), hook, 0)
	body := loadGoProgram(t, "test_go_body", goProgramInsns(true), hook, 0)
	if err := SetBody(hook, body); err != nil {
		t.Fatal(err)
	}
	return prog
}

// icmpEcho returns an ICMP echo request from the client to the server.
func icmpEcho(t testing.TB) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.ParseIP(fixture.ClientIPv4), DstIP: net.ParseIP(fixture.ServerIPv4)},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1},
		gopacket.Payload("entry"))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestEntryCapture runs programs that rewrite packets (swap the MACs and
// bounce them with XDP_TX) under a capture at entry and at exit at once:
// the entry record holds the packet as it came, the exit record as the
// program sent it out, and the program's verdict is unchanged.
func TestEntryCapture(t *testing.T) {
	fixture.RequireRoot(t)
	runner := fixture.NewXDPRunner(t)
	bpffs := fixture.BPFFS(t)

	for _, tc := range []struct {
		name string
		load func(testing.TB, *ebpf.Map) *ebpf.Program
		// rewritten is a packet the program bounces, rewritten; dropped
		// one it drops as it is.
		rewritten, dropped []byte
	}{
		{"c", xdpcaptest.LoadExample, icmpEcho(t), fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 9, []byte("drop"))},
		{"go", goEntryPrograms, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 7, []byte("echo")), fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 9, []byte("drop"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook, err := CreateHook(filepath.Join(bpffs, "entry-"+tc.name))
			if err != nil {
				t.Fatal(err)
			}
			defer hook.Close()
			prog := tc.load(t, hook)

			// Nobody captures: the program works through the empty slot.
			ret, plain, err := runner.RunData(prog, tc.rewritten)
			if err != nil {
				t.Fatal(err)
			}
			if Action(ret) != TX || bytes.Equal(plain, tc.rewritten) {
				t.Fatalf("without capture: %v, packet rewritten: %v; want XDPTx, rewritten", Action(ret), !bytes.Equal(plain, tc.rewritten))
			}

			c, err := Start([]*ebpf.Map{hook}, Options{Entry: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ret, out, err := runner.RunData(prog, tc.rewritten)
			if err != nil {
				t.Fatal(err)
			}
			if Action(ret) != TX || !bytes.Equal(out, plain) {
				t.Fatalf("under capture: %v % x, want XDPTx % x", Action(ret), out, plain)
			}
			if ret, err := runner.Run(prog, tc.dropped); err != nil || Action(ret) != Drop {
				t.Fatalf("under capture: %v %v, want XDPDrop", Action(ret), err)
			}
			stats, err := c.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Detach(); err != nil {
				t.Fatal(err)
			}
			hookEmpty(t, hook)
			if id, _, err := slotProgram(hook, BodySlot); err != nil || id == 0 {
				t.Errorf("the capture took the body out of its slot (%v)", err)
			}

			got := readAll(t, c)
			want := []Packet{
				{Action: Entry, Data: tc.rewritten},
				{Action: TX, Data: plain},
				{Action: Entry, Data: tc.dropped},
				{Action: Drop, Data: tc.dropped},
			}
			if len(got) != len(want) {
				t.Fatalf("captured %d packets, want %d: %v", len(got), len(want), got)
			}
			for i, w := range want {
				if g := got[i]; g.Action != w.Action || !bytes.Equal(g.Data, w.Data) || g.Length != len(w.Data) {
					t.Errorf("packet %d: %v % x (length %d), want %v % x", i, g.Action, g.Data, g.Length, w.Action, w.Data)
				}
			}
			if e := stats.Action(Entry); e.Seen != 2 || e.Matched != 2 || e.Lost != 0 {
				t.Errorf("entry counters %+v, want 2 seen and matched", e)
			}
			if tot := stats.Total(); tot.Matched != 4 {
				t.Errorf("total counters %+v, want 4 matched", tot)
			}
		})
	}
}

// TestEntryOnly captures at entry alone: only the entry slot is filled.
func TestEntryOnly(t *testing.T) {
	fixture.RequireRoot(t)
	runner := fixture.NewXDPRunner(t)
	hook, err := NewHook()
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	prog := goEntryPrograms(t, hook)
	c, err := Start([]*ebpf.Map{hook}, Options{Entry: true, Actions: []Action{}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for slot := range uint32(BodySlot) {
		id, _, err := slotProgram(hook, slot)
		if err != nil {
			t.Fatal(err)
		}
		if filled := id != 0; filled != (slot == EntrySlot) {
			t.Errorf("slot %d filled: %v", slot, filled)
		}
	}
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 5000, []byte("pass"))
	if ret, err := runner.Run(prog, pkt); err != nil || Action(ret) != Pass {
		t.Fatalf("program returned %v %v, want XDPPass", Action(ret), err)
	}
	c.Detach()
	if got := readAll(t, c); len(got) != 1 || got[0].Action != Entry || !bytes.Equal(got[0].Data, pkt) {
		t.Errorf("captured %v, want the packet at entry", got)
	}
}

// TestEntryUnsupported: a capture at entry on a hook whose program cannot
// take one fails with ErrNoEntry and leaves the hook as it was.
func TestEntryUnsupported(t *testing.T) {
	fixture.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		slots uint32
	}{
		{"exit-only hook", NumActions},
		{"no body", NumSlots},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := HookMapSpec("hook")
			spec.MaxEntries = tc.slots
			hook, err := ebpf.NewMap(spec)
			if err != nil {
				t.Fatal(err)
			}
			defer hook.Close()
			goProgram(t, hook)
			_, err = Start([]*ebpf.Map{hook}, Options{Entry: true})
			if !errors.Is(err, ErrNoEntry) {
				t.Fatalf("Start: %v, want ErrNoEntry", err)
			}
			hookEmpty(t, hook)
			// The same hook captures at exit all the same.
			c, err := Start([]*ebpf.Map{hook}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
}

func TestEnterErrors(t *testing.T) {
	for _, r := range []asm.Register{asm.R0, asm.R1, asm.R5, asm.R10} {
		if _, err := Enter(r, "hook"); err == nil {
			t.Errorf("Enter(%s): no error", r)
		}
	}
	if _, err := Enter(asm.R9, "hook"); err != nil {
		t.Errorf("Enter(r9): %v", err)
	}
}
