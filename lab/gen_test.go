package lab

import (
	"bytes"
	"context"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
)

// reflector returns an XDP program that counts IPv4 TCP frames whose flags
// are a bare SYN (slot 0) and anything else (slot 1); it turns each SYN
// into a "SYN-ACK" in place and sends it back with XDP_TX, as a SYN cookie
// responder does, and drops the rest.
func reflector(tb testing.TB) (*ebpf.Program, *ebpf.Map) {
	tb.Helper()
	counts, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { counts.Close() })
	const flags = 14 + 20 + 13 // Ethernet, IPv4 without options, TCP flags
	insns := asm.Instructions{
		asm.Mov.Imm(asm.R7, 1), // slot: other
		asm.Mov.Imm(asm.R8, 1), // XDP_DROP
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, flags+1),
		asm.JGT.Reg(asm.R4, asm.R3, "count"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		// Not IPv4: the stack's own frames (IPv6 neighbour discovery as
		// the veth comes up), not the generator's; passed, not counted.
		asm.JNE.Imm(asm.R5, 0x0008, "notip"), // 0x0800, read little-endian
		asm.LoadMem(asm.R5, asm.R2, 14+9, asm.Byte),
		asm.JNE.Imm(asm.R5, 6, "count"),
		asm.LoadMem(asm.R5, asm.R2, flags, asm.Byte),
		asm.JNE.Imm(asm.R5, 0x02, "count"),
		asm.Mov.Imm(asm.R7, 0),
		asm.Mov.Imm(asm.R8, 3), // XDP_TX
		asm.StoreImm(asm.R2, flags, 0x12, asm.Byte),
		asm.StoreImm(asm.R2, 14+20+4, 0x5eadbeef, asm.Word), // a new seq
		asm.StoreMem(asm.RFP, -4, asm.R7, asm.Word).WithSymbol("count"),
		asm.LoadMapPtr(asm.R1, counts.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.FetchAdd.Mem(asm.R0, asm.R1, asm.DWord, 0),
		asm.Mov.Reg(asm.R0, asm.R8).WithSymbol("out"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("notip"), // XDP_PASS
		asm.Return(),
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "reflector", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog, counts
}

// TestGenSendsTemplateUnderXDPTX floods a receiver that rewrites every SYN
// into a SYN-ACK in place and sends it back: the generator's page-pool
// buffers come back rewritten, and what the generator sends must still be
// SYNs, every one.
func TestGenSendsTemplateUnderXDPTX(t *testing.T) {
	l := newLab(t)
	prog, counts := reflector(t)
	lk, err := l.AttachServer(prog)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	// XDP_TX into a veth needs NAPI on the peer: an XDP program there.
	fixture.AttachXDP(t, l.Inet, l.InetIndex, fixture.ReturnProgram(t, 1))

	g, err := NewGenerator(l.Inet, l.InetIf, mustTemplates(t, "syn,port=80,randsrc"), 7)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	const n = 200000
	res, err := g.Run(context.Background(), RunOptions{Count: n})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != n {
		t.Fatalf("sent %d, want %d", res.Sent, n)
	}
	var syn, other uint64
	if err := counts.Lookup(uint32(0), &syn); err != nil {
		t.Fatal(err)
	}
	if err := counts.Lookup(uint32(1), &other); err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d: %d SYNs and %d other frames arrived", res.Sent, syn, other)
	// A full veth ring may drop some; what arrives must be SYNs.
	if other != 0 {
		t.Errorf("%d of %d frames arrived as something other than the template's SYN", other, syn+other)
	}
	if syn < n/2 {
		t.Errorf("only %d of %d SYNs arrived", syn, n)
	}
}

// TestGenWritesWholeFrame runs the generator's program once, without live
// frames, over a buffer holding something else than the template (garbage,
// as a receiver's in-place rewrite leaves a reused page-pool buffer): what
// it leaves must be an instance of the template.
func TestGenWritesWholeFrame(t *testing.T) {
	ns := fixture.Netns(t, "l4gw")
	r := fixture.NewXDPRunner(t)
	for _, spec := range []string{"syn,port=80,randsrc", "dns,name=www.*.example.org,v6,vlan=100", "udp,port=9,size=33"} {
		t.Run(spec, func(t *testing.T) {
			ts := mustTemplates(t, spec)
			g, err := NewGenerator(ns, "lo", ts, 3)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			if err := g.state.Update(uint32(0), genState{Limit: 10, Seed: 1}, ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
			for _, fill := range []byte{0x00, 0xff, 0x5a} {
				junk := bytes.Repeat([]byte{fill}, len(ts[0].Frame))
				ret, out, err := r.RunData(g.prog, junk)
				if err != nil {
					t.Fatal(err)
				}
				if ret != 4 { // XDP_REDIRECT
					t.Fatalf("action %d, want XDP_REDIRECT", ret)
				}
				if err := matchTemplate(ts[0], out[:len(ts[0].Frame)]); err != nil {
					t.Errorf("over a buffer of %#x: %v", fill, err)
				}
			}
		})
	}
}
