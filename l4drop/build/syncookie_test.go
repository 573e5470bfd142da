package build

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
)

// syncookiePort is the port the test programs apply the action to.
const syncookiePort = 8080

// syncookieMain is a test program: syncookie for `tcp dst port 8080`,
// counting outcomes, everything else passes.
const syncookieMain = `
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} l4t_outcomes SEC(".maps");

SEC("xdp")
int l4t_syncookie(struct xdp_md *ctx)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	const uint8_t *ip = data;
	int fam = l4_parse(data, end, &ip);
	const uint8_t *th;
	if (fam == 4) {
		if (ip + 20 > end || ip[9] != 6)
			return XDP_PASS;
		th = ip + (ip[0] & 15) * 4;
	} else if (fam == 6) {
		if (ip + 40 > end || ip[6] != 6)
			return XDP_PASS;
		th = ip + 40;
	} else
		return XDP_PASS;
	if (th + 4 > end || (th[2] << 8 | th[3]) != %d)
		return XDP_PASS;
	__u32 outcome, action;
	%s
	__u64 *n = bpf_map_lookup_elem(&l4t_outcomes, &outcome);
	if (n)
		__sync_fetch_and_add(n, 1);
	return action;
}
`

// syncookieProgram builds and loads the test program; it goes at cleanup.
func syncookieProgram(tb testing.TB, opts SyncookieOptions) *ebpf.Collection {
	tb.Helper()
	return syncookieProgramDefs(tb, opts, "")
}

// syncookieProgramDefs is syncookieProgram with defs (macros) before the C.
func syncookieProgramDefs(tb testing.TB, opts SyncookieOptions, defs string) *ebpf.Collection {
	tb.Helper()
	fixture.RequireRoot(tb)
	src := defs + prelude + syncookieC(opts) + fmt.Sprintf(syncookieMain, syncookiePort,
		syncookieCall("ctx", "data", "end", "ip", "fam", "outcome", "action"))
	return loadTestC(tb, src)
}

// loadTestC builds C with clang as Build does and loads the collection.
func loadTestC(tb testing.TB, src string) *ebpf.Collection {
	tb.Helper()
	obj, err := clang.Compile(context.Background(), src, "-mcpu=v3", "-Wno-unused-label")
	if err != nil {
		if errors.Is(err, clang.ErrNotFound) {
			tb.Skip(err)
		}
		tb.Fatal(err)
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		tb.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("verifier: %+v", ve)
		}
		tb.Fatal(err)
	}
	tb.Cleanup(func() { coll.Close() })
	return coll
}

func outcomes(tb testing.TB, coll *ebpf.Collection) [syncookieCodes]uint64 {
	tb.Helper()
	var out [syncookieCodes]uint64
	for i := range out {
		if err := coll.Maps["l4t_outcomes"].Lookup(uint32(i), &out[i]); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// synFrame builds a client SYN to the test port with the given options.
func synFrame(v6 bool, seq uint32, opts []layers.TCPOption) []byte {
	tcp := &layers.TCP{SrcPort: 40000, DstPort: syncookiePort, SYN: true, Seq: seq, Window: 64240, Options: opts}
	return tcpFrame(v6, tcp)
}

func tcpFrame(v6 bool, tcp *layers.TCP) []byte {
	eth := &layers.Ethernet{SrcMAC: fixture.ClientMAC, DstMAC: fixture.ServerMAC, EthernetType: layers.EthernetTypeIPv4}
	var ipl gopacket.SerializableLayer
	if v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.ParseIP(fixture.ClientIPv6), DstIP: net.ParseIP(fixture.ServerIPv6)}
		tcp.SetNetworkLayerForChecksum(ip)
		ipl = ip
	} else {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: net.ParseIP(fixture.ClientIPv4).To4(), DstIP: net.ParseIP(fixture.ServerIPv4).To4()}
		tcp.SetNetworkLayerForChecksum(ip)
		ipl = ip
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ipl, tcp); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// csum is the Internet checksum of b; 0 over a block with its checksum in
// place means it is valid.
func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// checkSynAck checks a SYN-ACK the program made from syn and returns its
// TCP layer.
func checkSynAck(t *testing.T, syn, out []byte, vlans int) *layers.TCP {
	t.Helper()
	if !bytes.Equal(out[0:6], syn[6:12]) || !bytes.Equal(out[6:12], syn[0:6]) {
		t.Errorf("MACs not swapped: %x", out[:12])
	}
	if !bytes.Equal(out[12:12+4*vlans], syn[12:12+4*vlans]) {
		t.Errorf("VLAN tags changed: %x, want %x", out[12:12+4*vlans], syn[12:12+4*vlans])
	}
	l2 := 14 + 4*vlans
	var inIP, outIP, pseudo []byte
	var tcpOff int
	if out[l2-2] == 0x08 {
		inIP, outIP = syn[l2:l2+20], out[l2:l2+20]
		if csum(outIP) != 0 {
			t.Errorf("IPv4 header checksum invalid")
		}
		if tot := int(binary.BigEndian.Uint16(outIP[2:])); tot != len(out)-l2 {
			t.Errorf("IPv4 total length %d, frame has %d after L2", tot, len(out)-l2)
		}
		if !bytes.Equal(outIP[12:16], inIP[16:20]) || !bytes.Equal(outIP[16:20], inIP[12:16]) {
			t.Errorf("IPv4 addresses not swapped")
		}
		tcpOff = l2 + 20
		pseudo = append(append([]byte{}, outIP[12:20]...), 0, 6, 0, 0)
		binary.BigEndian.PutUint16(pseudo[10:], uint16(len(out)-tcpOff))
	} else {
		inIP, outIP = syn[l2:l2+40], out[l2:l2+40]
		if pl := int(binary.BigEndian.Uint16(outIP[4:])); pl != len(out)-l2-40 {
			t.Errorf("IPv6 payload length %d, frame has %d", pl, len(out)-l2-40)
		}
		if !bytes.Equal(outIP[8:24], inIP[24:40]) || !bytes.Equal(outIP[24:40], inIP[8:24]) {
			t.Errorf("IPv6 addresses not swapped")
		}
		tcpOff = l2 + 40
		pseudo = append(append([]byte{}, outIP[8:40]...), 0, 0, 0, 0, 0, 0, 0, 6)
		binary.BigEndian.PutUint32(pseudo[32:], uint32(len(out)-tcpOff))
	}
	if csum(append(pseudo, out[tcpOff:]...)) != 0 {
		t.Errorf("TCP checksum invalid")
	}
	var in, got layers.TCP
	if err := in.DecodeFromBytes(syn[tcpOff:], gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	if err := got.DecodeFromBytes(out[tcpOff:], gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	if !got.SYN || !got.ACK || got.RST || got.FIN || got.ECE || got.CWR {
		t.Errorf("flags: want SYN+ACK only, got %+v", got)
	}
	if got.SrcPort != in.DstPort || got.DstPort != in.SrcPort {
		t.Errorf("ports %d->%d, want %d->%d", got.SrcPort, got.DstPort, in.DstPort, in.SrcPort)
	}
	if got.Ack != in.Seq+1 {
		t.Errorf("ack %d, want %d", got.Ack, in.Seq+1)
	}
	if len(got.Payload) != 0 {
		t.Errorf("SYN-ACK carries %d bytes of payload", len(got.Payload))
	}
	return &got
}

// synRawFrame builds a client SYN to the test port whose TCP options are
// the bytes opts (a multiple of 4 long, well-formed or not), followed by
// data bytes of payload; lengths and checksums are valid.
func synRawFrame(v6 bool, seq uint32, opts []byte, data int) []byte {
	f := synFrame(v6, seq, nil)
	l3, tcpOff := 14, 14+20
	if v6 {
		tcpOff = 14 + 40
	}
	out := append(append([]byte{}, f[:tcpOff+20]...), opts...)
	for i := range data {
		out = append(out, byte(i))
	}
	th := out[tcpOff:]
	th[12] = byte((20+len(opts))/4)<<4 | th[12]&0x0f
	var pseudo []byte
	if v6 {
		binary.BigEndian.PutUint16(out[l3+4:], uint16(len(th)))
		pseudo = append(append([]byte{}, out[l3+8:l3+40]...), 0, 0, 0, 0, 0, 0, 0, 6)
		binary.BigEndian.PutUint32(pseudo[32:], uint32(len(th)))
	} else {
		binary.BigEndian.PutUint16(out[l3+2:], uint16(len(out)-l3))
		binary.BigEndian.PutUint16(out[l3+10:], 0)
		binary.BigEndian.PutUint16(out[l3+10:], csum(out[l3:l3+20]))
		pseudo = append(append([]byte{}, out[l3+12:l3+20]...), 0, 6, 0, 0)
		binary.BigEndian.PutUint16(pseudo[10:], uint16(len(th)))
	}
	binary.BigEndian.PutUint16(th[16:], 0)
	binary.BigEndian.PutUint16(th[16:], csum(append(pseudo, th...)))
	return out
}

func tcpOption(tcp *layers.TCP, kind layers.TCPOptionKind) []byte {
	for _, o := range tcp.Options {
		if o.OptionType == kind {
			return append([]byte{}, o.OptionData...)
		}
	}
	return nil
}

// TestSyncookieTestRun runs SYNs and ACKs through the action with
// BPF_PROG_TEST_RUN: a SYN gets a well-formed SYN-ACK whose sequence number
// is a cookie the kernel accepts in the ACK, and a bogus ACK is dropped.
func TestSyncookieTestRun(t *testing.T) {
	coll := syncookieProgram(t, SyncookieOptions{})
	prog := coll.Programs["l4t_syncookie"]
	r := fixture.NewXDPRunner(t)
	mss := func(v uint16) layers.TCPOption {
		return layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: binary.BigEndian.AppendUint16(nil, v)}
	}
	ts := layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0}}
	sack := layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}
	ws := layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{9}}
	nop := layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1}
	tests := []struct {
		name  string
		v6    bool
		vlans []uint16
		opts  []layers.TCPOption
		// what the SYN-ACK must announce
		ts, sack bool
		wscale   int // -1: none
	}{
		{name: "v4 linux", opts: []layers.TCPOption{mss(1460), sack, ts, nop, ws}, ts: true, sack: true, wscale: 7},
		{name: "v4 no timestamps", opts: []layers.TCPOption{mss(1460), nop, ws, nop, nop, sack}, wscale: -1},
		{name: "v4 bare", wscale: -1},
		{name: "v4 timestamps only", opts: []layers.TCPOption{nop, nop, ts}, ts: true, wscale: -1},
		{name: "v6 linux", v6: true, opts: []layers.TCPOption{mss(1440), sack, ts, nop, ws}, ts: true, sack: true, wscale: 7},
		{name: "v6 no timestamps", v6: true, opts: []layers.TCPOption{mss(1440)}, wscale: -1},
		{name: "v4 vlan", vlans: []uint16{100}, opts: []layers.TCPOption{mss(1460), sack, ts, nop, ws}, ts: true, sack: true, wscale: 7},
		{name: "v6 qinq", v6: true, vlans: []uint16{100, 200}, opts: []layers.TCPOption{mss(1440), nop, nop, ts}, ts: true, wscale: -1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			syn := synFrame(tc.v6, 1000*uint32(i)+7, tc.opts)
			if len(tc.vlans) > 0 {
				syn = fixture.VLAN(syn, tc.vlans...)
			}
			before := outcomes(t, coll)
			ret, out, err := r.RunData(prog, syn)
			if err != nil {
				t.Fatal(err)
			}
			if ret == 2 {
				// The first SYN to a destination each second goes to the stack.
				if o := outcomes(t, coll); o[SyncookieArmed] != before[SyncookieArmed]+1 {
					t.Fatalf("SYN passed but not counted as armed: %v", o)
				}
				ret, out, err = r.RunData(prog, syn)
				if err != nil {
					t.Fatal(err)
				}
			}
			if ret != 3 {
				t.Fatalf("SYN: got action %d, want XDP_TX (3)", ret)
			}
			got := checkSynAck(t, syn, out, len(tc.vlans))
			wantMSS := uint16(1460)
			if tc.v6 {
				wantMSS = 1440
			}
			if m := tcpOption(got, layers.TCPOptionKindMSS); len(m) != 2 || binary.BigEndian.Uint16(m) != wantMSS {
				t.Errorf("MSS option %x, want %d", m, wantMSS)
			}
			tsOpt := tcpOption(got, layers.TCPOptionKindTimestamps)
			if (tsOpt != nil) != tc.ts {
				t.Errorf("timestamp option %x, want present=%v", tsOpt, tc.ts)
			}
			if (tcpOption(got, layers.TCPOptionKindSACKPermitted) != nil) != tc.sack {
				t.Errorf("SACK permitted: want %v", tc.sack)
			}
			wsOpt := tcpOption(got, layers.TCPOptionKindWindowScale)
			if tc.wscale < 0 && wsOpt != nil || tc.wscale >= 0 && (len(wsOpt) != 1 || int(wsOpt[0]) != tc.wscale) {
				t.Errorf("window scale %x, want %d", wsOpt, tc.wscale)
			}
			if tsOpt != nil {
				if ecr := binary.BigEndian.Uint32(tsOpt[4:]); ecr != 0x12345678 {
					t.Errorf("TSecr %#x, want the SYN's TSval 0x12345678", ecr)
				}
				// The low 6 bits encode the client's options as the kernel does.
				want := uint32(0xf)
				for _, o := range tc.opts {
					if o.OptionType == layers.TCPOptionKindWindowScale {
						want = uint32(o.OptionData[0])
					}
				}
				if tc.sack {
					want |= 0x10
				}
				if v := binary.BigEndian.Uint32(tsOpt); v&0x3f != want {
					t.Errorf("TSval %#x: low bits %#x, want %#x", v, v&0x3f, want)
				}
			}

			// The client's ACK: its cookie checks; one off does not.
			for _, bogus := range []bool{false, true} {
				ack := &layers.TCP{SrcPort: got.DstPort, DstPort: got.SrcPort, ACK: true, Seq: got.Ack, Ack: got.Seq + 1, Window: 502}
				if bogus {
					// Not +1: the cookie's low bits are the MSS index,
					// and the next index is a valid cookie too.
					ack.Ack += 1 << 20
				}
				frame := tcpFrame(tc.v6, ack)
				if len(tc.vlans) > 0 {
					frame = fixture.VLAN(frame, tc.vlans...)
				}
				before := outcomes(t, coll)
				ret, err := r.Run(prog, frame)
				if err != nil {
					t.Fatal(err)
				}
				after := outcomes(t, coll)
				want, code := uint32(2), SyncookieOK
				if bogus {
					want, code = 1, SyncookieBad
				}
				if ret != want || after[code] != before[code]+1 {
					t.Errorf("ACK (bogus %v): action %d, want %d; outcomes %v -> %v", bogus, ret, want, before, after)
				}
			}
		})
	}
	// Anything else to the port is dropped: a FIN, a RST, a SYN-ACK nobody asked for.
	for _, tcp := range []*layers.TCP{
		{SrcPort: 40000, DstPort: syncookiePort, FIN: true, ACK: true, Seq: 5, Ack: 9},
		{SrcPort: 40000, DstPort: syncookiePort, RST: true, Seq: 5},
		{SrcPort: 40000, DstPort: syncookiePort, SYN: true, ACK: true, Seq: 5, Ack: 9},
		{SrcPort: 40000, DstPort: syncookiePort, SYN: true, FIN: true, Seq: 5},
	} {
		if ret, err := r.Run(prog, tcpFrame(false, tcp)); err != nil || ret != 1 {
			t.Errorf("%v: action %d (%v), want XDP_DROP", tcp, ret, err)
		}
	}
}

// syncookieOptionsMain is a test program that reads a SYN's options both
// ways, with l4_sc_fast and with the walk (l4_sc_options), and keeps what
// each found in l4t_opts: whether the fast path read them, then for each
// tsval, mss, ts, sack, ws and wscale.
const syncookieOptionsMain = `
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32[13]);
} l4t_opts SEC(".maps");

SEC("xdp")
int l4t_options(struct xdp_md *ctx)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	const uint8_t *ip = data;
	int fam = l4_parse(data, end, &ip);
	const uint8_t *th = ip + (fam == 4 ? 20 : 40);
	if (!fam || th + 20 > end)
		return XDP_ABORTED;
	__u32 thlen = (th[12] >> 4) * 4;
	__u32 k = 0;
	__u32 *r = bpf_map_lookup_elem(&l4t_opts, &k);
	if (!r || thlen < 20)
		return XDP_ABORTED;
	struct l4_sc_syn o = {};
	r[0] = l4_sc_fast(th, end, thlen, &o);
	r[1] = o.tsval, r[2] = o.mss, r[3] = o.ts, r[4] = o.sack, r[5] = o.ws, r[6] = o.wscale;
	struct l4_sc_walk w = {};
	w.o.mss = L4_SC_MSS_DEFAULT;
	l4_sc_options(ctx, (__u32)(th + 20 - data), thlen - 20, &w);
	r[7] = w.o.tsval, r[8] = w.o.mss, r[9] = w.o.ts, r[10] = w.o.sack, r[11] = w.o.ws, r[12] = w.o.wscale;
	return XDP_PASS;
}
`

// TestSyncookieFastOptions: the option layouts l4_sc_fast reads straight
// from the packet come out as the walk (l4_sc_options) reads them. The
// SYNs: Linux's, Windows' and MSS-only options with many values, no
// options, near misses of each (every byte changed in turn, frames cut
// short, data after the options) and other layouts, over IPv4 and IPv6.
// The fast path must read the layouts it is for, and find in any SYN it
// reads what the walk finds. And two programs, one built without the fast
// path (L4_SC_NO_FAST), answer each SYN with the same action and outcome,
// and the same SYN-ACK but for the clock part of the TSval (its 6 low
// bits, the client's window scale and SACK, must agree) and so the TCP
// checksum, which must be valid.
func TestSyncookieFastOptions(t *testing.T) {
	fast := syncookieProgram(t, SyncookieOptions{})
	walk := syncookieProgramDefs(t, SyncookieOptions{}, "#define L4_SC_NO_FAST\n")
	both := loadTestC(t, prelude+syncookieC(SyncookieOptions{})+syncookieOptionsMain)
	r := fixture.NewXDPRunner(t)

	linux := func(mss uint16, tsval uint32, ws byte) []byte {
		o := binary.BigEndian.AppendUint32([]byte{2, 4, byte(mss >> 8), byte(mss), 4, 2, 8, 10}, tsval)
		return append(binary.BigEndian.AppendUint32(o, 0x01020304), 1, 3, 3, ws)
	}
	windows := func(mss uint16, ws byte) []byte {
		return []byte{2, 4, byte(mss >> 8), byte(mss), 1, 3, 3, ws, 1, 1, 4, 2}
	}
	mssOnly := func(mss uint16) []byte { return []byte{2, 4, byte(mss >> 8), byte(mss)} }
	type syn struct {
		name string
		opts []byte
		cut  int  // bytes cut off the frame's end
		data int  // bytes of payload
		fast bool // the fast path must read it
	}
	syns := []syn{{name: "no options", fast: true}, {name: "no options with data", data: 3, fast: true}}
	for _, mss := range []uint16{0, 1, 536, 1440, 1460, 65535} {
		for _, ws := range []byte{0, 7, 14, 15, 255} {
			for _, tsval := range []uint32{0, 0x12345678, 0xffffffff} {
				syns = append(syns, syn{name: fmt.Sprintf("linux mss %d ws %d tsval %#x", mss, ws, tsval), opts: linux(mss, tsval, ws), fast: true})
			}
			syns = append(syns, syn{name: fmt.Sprintf("windows mss %d ws %d", mss, ws), opts: windows(mss, ws), fast: true})
		}
		syns = append(syns, syn{name: fmt.Sprintf("mss %d", mss), opts: mssOnly(mss), fast: true})
	}
	for _, base := range []syn{
		{name: "linux", opts: linux(1460, 0x0a0b0c0d, 7)},
		{name: "windows", opts: windows(1460, 8)},
		{name: "mss", opts: mssOnly(1460)},
	} {
		for i, b := range base.opts {
			for _, v := range []byte{0, 1, 2, 3, 4, 8, 10, b + 1, 0xff} {
				if v != b {
					o := bytes.Clone(base.opts)
					o[i] = v
					syns = append(syns, syn{name: fmt.Sprintf("%s, byte %d %#x", base.name, i, v), opts: o})
				}
			}
		}
		for cut := 1; cut <= len(base.opts); cut++ {
			syns = append(syns, syn{name: fmt.Sprintf("%s cut by %d", base.name, cut), opts: base.opts, cut: cut})
		}
		syns = append(syns, syn{name: base.name + " with data", opts: base.opts, data: 9, fast: true})
	}
	syns = append(syns,
		syn{name: "linux without sack", opts: []byte{2, 4, 5, 0xb4, 1, 1, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7}},
		syn{name: "linux, ts and sack swapped", opts: []byte{2, 4, 5, 0xb4, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 4, 2, 1, 3, 3, 7}},
		syn{name: "linux, eol for nop", opts: []byte{2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 0, 3, 3, 7}},
		syn{name: "linux and nops", opts: append(linux(1460, 5, 7), 1, 1, 1, 1)},
		syn{name: "linux and eol", opts: append(linux(1460, 5, 7), 0, 0, 0, 0)},
		syn{name: "macos", opts: []byte{2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 4, 2, 0, 0}},
		syn{name: "windows, sack first", opts: []byte{2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 8}},
		syn{name: "timestamp only", opts: []byte{1, 1, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0}},
		syn{name: "all eol", opts: make([]byte, 20)},
		syn{name: "all nop", opts: bytes.Repeat([]byte{1}, 40)},
	)

	type result struct {
		ret     uint32
		outcome int
		frame   []byte
	}
	run := func(coll *ebpf.Collection, frame []byte) result {
		t.Helper()
		var res result
		// The first SYN to the destination each second goes to the
		// stack (armed), once: the second is answered.
		for range 2 {
			before := outcomes(t, coll)
			ret, out, err := r.RunData(coll.Programs["l4t_syncookie"], frame)
			if err != nil {
				t.Fatal(err)
			}
			res = result{ret: ret, outcome: -1, frame: out}
			for i, n := range outcomes(t, coll) {
				if n != before[i] {
					res.outcome = i
				}
			}
			if res.outcome != SyncookieArmed {
				break
			}
		}
		return res
	}
	// key is what must agree between the programs' results: the TCP
	// checksum and the TSval's clock part zeroed.
	key := func(res result, v6 bool) result {
		if res.ret != 3 {
			res.frame = nil
			return res
		}
		res.frame = bytes.Clone(res.frame)
		th := res.frame[14+20:]
		if v6 {
			th = res.frame[14+40:]
		}
		th[16], th[17] = 0, 0
		if th[12]>>4 == 10 {
			th[28], th[29], th[30] = 0, 0, 0
			th[31] &= 0x3f
		}
		return res
	}

	sent := 0
	for _, v6 := range []bool{false, true} {
		for i, s := range syns {
			whole := synRawFrame(v6, uint32(i)*7919+1, s.opts, s.data)
			frame := whole[:len(whole)-s.cut]
			if ret, err := r.Run(both.Programs["l4t_options"], frame); err != nil || ret != 2 {
				t.Fatalf("options: action %d, %v", ret, err)
			}
			var o [13]uint32
			if err := both.Maps["l4t_opts"].Lookup(uint32(0), &o); err != nil {
				t.Fatal(err)
			}
			if s.fast && o[0] == 0 {
				t.Errorf("v6 %v, %s (options %x): not read by the fast path", v6, s.name, s.opts)
			}
			if o[0] != 0 && [6]uint32(o[1:7]) != [6]uint32(o[7:13]) {
				t.Errorf("v6 %v, %s (options %x, cut %d): the fast path found tsval, mss, ts, sack, ws, wscale %d, the walk %d",
					v6, s.name, s.opts, s.cut, o[1:7], o[7:13])
			}
			var a, b result
			// Twice if they differ: the cookie changes with the minute.
			for range 2 {
				a, b = run(fast, frame), run(walk, frame)
				if ka, kb := key(a, v6), key(b, v6); ka.ret == kb.ret && ka.outcome == kb.outcome && bytes.Equal(ka.frame, kb.frame) {
					break
				}
			}
			ka, kb := key(a, v6), key(b, v6)
			if ka.ret != kb.ret || ka.outcome != kb.outcome || !bytes.Equal(ka.frame, kb.frame) {
				t.Errorf("v6 %v, %s (options %x, cut %d, data %d): fast path action %d outcome %d frame\n%x\nwalk action %d outcome %d frame\n%x",
					v6, s.name, s.opts, s.cut, s.data, a.ret, a.outcome, a.frame, b.ret, b.outcome, b.frame)
				continue
			}
			if a.ret == 3 {
				sent++
				checkSynAck(t, whole, a.frame, 0)
				checkSynAck(t, whole, b.frame, 0)
			}
		}
	}
	if sent < len(syns) {
		t.Errorf("%d SYN-ACKs sent for %d SYNs: most must be answered", sent, 2*len(syns))
	}
}

// TestSyncookieWScale checks the window scale follows the kernel's choice
// for the default sysctls (tcp_rmem max 6 MiB, rmem_max 208 KiB) and bounds.
func TestSyncookieWScale(t *testing.T) {
	for _, tc := range []struct {
		tcp, core uint32
		want      uint8
	}{
		{6291456, 212992, 7},
		{4194304, 212992, 7},
		{33554432, 212992, 10},
		{65535, 0, 0},
		{0, 0, 0},
		{1 << 31, 0, 14},
	} {
		if got := SyncookieWScale(tc.tcp, tc.core); got != tc.want {
			t.Errorf("SyncookieWScale(%d, %d) = %d, want %d", tc.tcp, tc.core, got, tc.want)
		}
	}
}

// setSysctl writes a sysctl inside ns.
func setSysctl(tb testing.TB, ns *netns.NS, name, value string) {
	tb.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	if err := ns.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		tb.Fatalf("sysctl %s=%s: %v", name, value, err)
	}
}

// echoServer accepts connections on port in ns and echoes one line each.
func echoServer(tb testing.TB, ns *netns.NS, port int) {
	tb.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					c.Write([]byte(line))
				}
			}()
		}
	}()
}

// echoOnce connects from ns, sends a line and reads it back.
func echoOnce(ns *netns.NS, addr string) error {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := fmt.Sprintf("hello from %s\n", c.LocalAddr())
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if got != msg {
		return fmt.Errorf("read back %q, want %q", got, msg)
	}
	return nil
}

// TestSyncookieTCP connects real clients (the kernel's TCP stack) through
// the action to a real server, IPv4 and IPv6, with and without timestamps.
func TestSyncookieTCP(t *testing.T) {
	coll := syncookieProgram(t, SyncookieOptions{})
	lab := fixture.Lab(t)
	setSysctl(t, lab.Server, "net.ipv4.tcp_syncookies", "2")
	setSysctl(t, lab.Server, "net.ipv4.tcp_timestamps", "2")
	fixture.AttachXDP(t, lab.Server, lab.ServerIndex, coll.Programs["l4t_syncookie"])
	// XDP_TX into a veth needs NAPI on the peer.
	fixture.AttachXDP(t, lab.Client, lab.ClientIndex, fixture.PassProgram(t))
	echoServer(t, lab.Server, syncookiePort)

	const n = 20
	for _, tc := range syncookieClients {
		t.Run(tc.name, func(t *testing.T) {
			setSysctl(t, lab.Client, "net.ipv4.tcp_timestamps", tc.ts)
			before := outcomes(t, coll)
			for i := range n {
				if err := echoOnce(lab.Client, net.JoinHostPort(tc.addr, fmt.Sprint(syncookiePort))); err != nil {
					t.Fatalf("connection %d: %v (outcomes %v)", i, err, outcomes(t, coll))
				}
			}
			after := outcomes(t, coll)
			var d [syncookieCodes]uint64
			for i := range d {
				d[i] = after[i] - before[i]
			}
			t.Logf("outcomes: sent %d armed %d ok %d known %d bad %d drop %d err %d",
				d[SyncookieSent], d[SyncookieArmed], d[SyncookieOK], d[SyncookieKnown], d[SyncookieBad], d[SyncookieDrop], d[SyncookieErr])
			// Within a second at most one SYN goes to the stack; the rest
			// were answered in XDP and their ACKs checked there.
			if d[SyncookieSent]+d[SyncookieArmed] < n || d[SyncookieSent] < n/2 {
				t.Errorf("%d SYNs answered in XDP, %d handed to the stack, want most of %d answered", d[SyncookieSent], d[SyncookieArmed], n)
			}
			if d[SyncookieOK] < d[SyncookieSent] {
				t.Errorf("%d cookie ACKs passed for %d SYN-ACKs sent", d[SyncookieOK], d[SyncookieSent])
			}
			if d[SyncookieBad] != 0 || d[SyncookieErr] != 0 {
				t.Errorf("%d bad cookies, %d errors", d[SyncookieBad], d[SyncookieErr])
			}
		})
	}
}

// syncookieCostMain is a harness for the cost of a SYN-ACK: BPF_PROG_TEST_RUN
// repeats a run over the buffer the last run left, so each run first puts
// the SYN back (its length and bytes), then, with L4T_COOKIE, answers it.
const syncookieCostMain = `
SEC("xdp")
int l4t_cost(struct xdp_md *ctx)
{
	uint8_t *data = (uint8_t *)(long)ctx->data;
	uint8_t *end = (uint8_t *)(long)ctx->data_end;
	long delta = %[1]d - (end - data);
	if (delta && bpf_xdp_adjust_tail(ctx, (int)delta))
		return XDP_ABORTED;
	data = (uint8_t *)(long)ctx->data;
	end = (uint8_t *)(long)ctx->data_end;
	if (data + %[1]d > end)
		return XDP_ABORTED;
%[2]s
	if (!L4T_COOKIE)
		return XDP_TX;
	__u32 outcome = l4_syncookie(ctx, 14, 4);
	return l4_syncookie_action(outcome);
}

SEC("xdp")
int l4t_ack(struct xdp_md *ctx)
{
	__u32 outcome = l4_syncookie(ctx, 14, 4);
	return l4_syncookie_action(outcome);
}

SEC("xdp")
int l4t_drop(struct xdp_md *ctx)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	const uint8_t *ip = data;
	return l4_parse(data, end, &ip) ? XDP_DROP : XDP_PASS;
}
`

// TestSyncookieCost measures, with BPF_PROG_TEST_RUN, what answering a SYN
// and checking an ACK cost per packet, against parse-and-drop. Indicative
// figures (a shared machine); nothing is asserted about them.
func TestSyncookieCost(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	fixture.RequireRoot(t)
	ts := layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 0, 0, 0, 0}}
	opts := []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}, ts,
		{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	}
	syn := synFrame(false, 99, opts)
	var restore strings.Builder
	for i := 0; i+4 <= len(syn); i += 4 {
		fmt.Fprintf(&restore, "\t*(__u32 *)(data + %d) = %#xu;\n", i, binary.NativeEndian.Uint32(syn[i:]))
	}
	for i := len(syn) &^ 3; i < len(syn); i++ {
		fmt.Fprintf(&restore, "\tdata[%d] = %d;\n", i, syn[i])
	}
	build := func(cookie int) *ebpf.Collection {
		src := fmt.Sprintf("#define L4T_COOKIE %d\n", cookie) + prelude + syncookieC(SyncookieOptions{}) +
			fmt.Sprintf(syncookieCostMain, len(syn), restore.String())
		return loadTestC(t, src)
	}
	const n = 1 << 18
	bench := func(prog *ebpf.Program, pkt []byte, want uint32) float64 {
		t.Helper()
		ret, d, err := prog.Benchmark(pkt, n, nil)
		if err != nil || ret != want {
			t.Fatalf("benchmark: ret %d (want %d), %v", ret, want, err)
		}
		return float64(d.Nanoseconds())
	}
	base := build(0)
	with := build(1)
	drop := bench(base.Programs["l4t_drop"], syn, 1)
	restoreOnly := bench(base.Programs["l4t_cost"], syn, 3)
	// The first SYN of a second goes to the stack: arm the slot first.
	with.Programs["l4t_cost"].Run(&ebpf.RunOptions{Data: syn})
	answer := bench(with.Programs["l4t_cost"], syn, 3)
	r := fixture.NewXDPRunner(t)
	_, out, err := r.RunData(with.Programs["l4t_cost"], syn)
	if err != nil {
		t.Fatal(err)
	}
	synack := checkSynAck(t, syn, out, 0)
	ack := tcpFrame(false, &layers.TCP{SrcPort: synack.DstPort, DstPort: synack.SrcPort, ACK: true, Seq: synack.Ack, Ack: synack.Seq + 1, Window: 502})
	ackOK := bench(with.Programs["l4t_ack"], ack, 2)
	bad := tcpFrame(false, &layers.TCP{SrcPort: synack.DstPort, DstPort: synack.SrcPort, ACK: true, Seq: synack.Ack, Ack: synack.Seq + 1 + 1<<20, Window: 502})
	ackBad := bench(with.Programs["l4t_ack"], bad, 1)
	cookie := answer - restoreOnly
	t.Logf("parse+drop %.1f ns; SYN -> SYN-ACK %.1f ns (%.1f with the harness's restore, which alone is %.1f); ACK with a valid cookie %.1f ns, with a bad one %.1f ns",
		drop, cookie, answer, restoreOnly, ackOK, ackBad)
	// Program time only: a received frame costs the driver and XDP_TX
	// more on top, the same for drop-all and syncookie, which brings the
	// ratio of rates much closer to 1 than this one.
	t.Logf("program time, parse+drop / SYN-ACK: %.2f", drop/max(cookie, 1))
}

// syncookieClients are the clients both syncookie tests connect with: each
// family, with and without TCP timestamps (the cookie encodes options in
// the timestamp when there is one).
var syncookieClients = []struct {
	name string
	addr string
	ts   string
}{
	{"ipv4 timestamps", fixture.ServerIPv4, "1"},
	{"ipv4 no timestamps", fixture.ServerIPv4, "0"},
	{"ipv6 timestamps", fixture.ServerIPv6, "1"},
	{"ipv6 no timestamps", fixture.ServerIPv6, "0"},
}
