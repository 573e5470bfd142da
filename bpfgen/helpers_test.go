package bpfgen

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/cbpfc"
	"github.com/l4drop/l4drop/internal/fixture"
)

// eth is where the IP header starts in the frames the tests build.
const eth = 14

// runner runs generated programs in three machines: x/net/bpf's VM,
// libpcap's interpreter and the kernel (through cbpfc, as L4Drop and
// xdpcap run them), and checks that they agree with the expectation.
type runner struct {
	t     *testing.T
	xdp   *fixture.XDPRunner
	progs map[*Program]*ebpf.Program
	runs  int
}

func newRunner(t *testing.T) *runner {
	t.Helper()
	fixture.RequireRoot(t)
	return &runner{t: t, xdp: fixture.NewXDPRunner(t), progs: map[*Program]*ebpf.Program{}}
}

// load checks the program's text forms and loads it into the kernel.
func (r *runner) load(name string, p *Program) *ebpf.Program {
	t := r.t
	t.Helper()
	if prog, ok := r.progs[p]; ok {
		return prog
	}
	if err := cbpf.Validate(p.Insns); err != nil {
		t.Fatalf("%s: generated program invalid: %v\n%s", name, err, p.Listing)
	}
	text, err := cbpf.Format(p.Insns)
	if err != nil {
		t.Fatalf("%s: Format: %v", name, err)
	}
	back, err := cbpf.Parse(text)
	if err != nil {
		t.Fatalf("%s: Parse(Format()): %v", name, err)
	}
	if again, _ := cbpf.Format(back); again != text {
		t.Fatalf("%s: the bytecode does not read back:\n%s\n%s", name, text, again)
	}
	if p.Listing == "" {
		t.Errorf("%s: no listing", name)
	}
	insns, err := cbpfc.XDPProgram(p.Insns)
	if err != nil {
		t.Fatalf("%s: cbpfc: %v\n%s", name, err, p.Listing)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, Instructions: insns, License: "GPL"})
	if err != nil {
		t.Fatalf("%s: the verifier refuses the program: %v\n%s", name, err, p.Listing)
	}
	t.Cleanup(func() { prog.Close() })
	r.progs[p] = prog
	return prog
}

// check runs p on an Ethernet frame whose IP header is at 14 (p must be
// generated for that offset) and wants a non-zero result exactly when
// want is true.
func (r *runner) check(name string, p *Program, frame []byte, want bool) {
	t := r.t
	t.Helper()
	prog := r.load(name, p)
	vm, err := bpf.NewVM(p.Insns)
	if err != nil {
		t.Fatalf("%s: x/net/bpf: %v", name, err)
	}
	vmRes, err := vm.Run(frame)
	if err != nil {
		t.Fatalf("%s: x/net/bpf: %v", name, err)
	}
	pcapRes := cbpf.Interpret(p.Insns, frame, len(frame))
	if uint32(vmRes) != pcapRes {
		t.Errorf("%s: x/net/bpf gives %d, libpcap %d", name, vmRes, pcapRes)
	}
	if got := pcapRes != 0; got != want {
		t.Errorf("%s: result %d, want a match: %v\n%s", name, pcapRes, want, p.Listing)
	}
	if len(frame) < eth {
		return // XDP takes no frame shorter than an Ethernet header
	}
	ret, err := r.xdp.Run(prog, frame)
	if err != nil {
		t.Fatalf("%s: kernel run: %v", name, err)
	}
	const xdpDrop, xdpPass = 1, 2
	if want := map[bool]uint32{true: xdpPass, false: xdpDrop}[pcapRes != 0]; ret != want {
		t.Errorf("%s: kernel returns XDP action %d, libpcap's result %d says %d", name, ret, pcapRes, want)
	}
	r.runs++
}

// dnsPayload builds a DNS query whose question name has the given labels
// (taken as they are), with flags and counts as given.
func dnsPayload(flags uint16, counts [4]uint16, labels ...string) []byte {
	q := binary.BigEndian.AppendUint16(nil, 0x1234)
	q = binary.BigEndian.AppendUint16(q, flags)
	for _, c := range counts {
		q = binary.BigEndian.AppendUint16(q, c)
	}
	for _, l := range labels {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	q = append(q, 0)
	q = binary.BigEndian.AppendUint16(q, 1)
	return binary.BigEndian.AppendUint16(q, 1)
}

// query is an ordinary query (RD, one question) for name.
func query(name string) []byte { return fixture.DNSQuery(name, 1) }

func udp4(payload []byte) []byte {
	return fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53, payload)
}

func udp6(payload []byte) []byte {
	return fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 40000, 53, payload)
}

func ip(s string) net.IP { return net.IP(netip.MustParseAddr(s).AsSlice()) }

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ether(et layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: fixture.ClientMAC, DstMAC: fixture.ServerMAC, EthernetType: et}
}

// udp4With builds a UDP/IPv4 frame with a changed IPv4 header.
func udp4With(t *testing.T, dport uint16, payload []byte, change func(*layers.IPv4)) []byte {
	t.Helper()
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: ip(fixture.ClientIPv4), DstIP: ip(fixture.ServerIPv4)}
	change(ip4)
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip4)
	return serialize(t, ether(layers.EthernetTypeIPv4), ip4, udp, gopacket.Payload(payload))
}

// tcp4 builds a TCP/IPv4 frame carrying payload.
func tcp4(t *testing.T, dport uint16, payload []byte) []byte {
	t.Helper()
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: ip(fixture.ClientIPv4), DstIP: ip(fixture.ServerIPv4)}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(dport), ACK: true, PSH: true, Window: 512}
	tcp.SetNetworkLayerForChecksum(ip4)
	return serialize(t, ether(layers.EthernetTypeIPv4), ip4, tcp, gopacket.Payload(payload))
}

func mustGen(t *testing.T) func(*Program, error) *Program {
	return func(p *Program, err error) *Program {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}

func TestAsmTrampolines(t *testing.T) {
	// A jump over 300 instructions needs a trampoline.
	a := &asm{}
	a.emit(bpf.LoadAbsolute{Off: 0, Size: 1})
	a.jeq(1, "far")
	for i := 0; i < 300; i++ {
		a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1})
	}
	a.emit(bpf.RetA{})
	a.label("far")
	a.ret(2)
	p, err := a.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if err := cbpf.Validate(p.Insns); err != nil {
		t.Fatal(err)
	}
	for _, pkt := range [][]byte{{1}, {0}} {
		want := uint32(2)
		if pkt[0] != 1 {
			want = 300
		}
		if got := cbpf.Interpret(p.Insns, pkt, 1); got != want {
			t.Errorf("packet %v: %d, want %d", pkt, got, want)
		}
	}
	if !strings.Contains(p.Listing, "ja far") {
		t.Errorf("listing without the trampoline:\n%s", p.Listing)
	}
}

// interpret runs p in libpcap's interpreter.
func interpret(p *Program, pkt []byte) bool {
	return cbpf.Interpret(p.Insns, pkt, len(pkt)) != 0
}
