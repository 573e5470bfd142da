package filter

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/xdpcap"
)

func TestParse(t *testing.T) {
	udp := fixture.UDP4("198.18.0.1", "198.18.0.2", 1000, 53, []byte("query"))
	syn := fixture.TCP4SYN("198.18.0.1", "198.18.0.2", 1000, 80)
	for _, tc := range []struct {
		name     string
		expr     string
		udp, syn bool   // whether the filter matches the packets
		err      string // part of the error, if one is wanted
	}{
		{"empty", "  ", true, true, ""},
		{"expression", "udp dst port 53", true, false, ""},
		{"bytecode", "4,40 0 0 12,21 0 1 2048,6 0 0 262144,6 0 0 0", true, true, ""},
		{"bad bytecode", "2,6 0 0 0", false, false, "EXPR (bytecode, 9 bytes)"},
		{"bad expression", "udp port banana", false, false, "EXPR (15 bytes)"},
		{"huge expression", "udp port " + strings.Repeat("x", 1000), false, false, "more bytes)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prog, err := Parse(tc.expr, cbpf.LinkType(layers.LinkTypeEthernet), xdpcap.DefaultSnapLen)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				if len(err.Error()) > 3*shortLen {
					t.Errorf("error of %d bytes: it quotes too much", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			matches := func(pkt []byte) bool { return prog == nil || cbpf.Interpret(prog, pkt, len(pkt)) != 0 }
			if got := matches(udp); got != tc.udp {
				t.Errorf("matches a UDP query: %v, want %v", got, tc.udp)
			}
			if got := matches(syn); got != tc.syn {
				t.Errorf("matches a SYN: %v, want %v", got, tc.syn)
			}
		})
	}
}

func TestPcapLinkType(t *testing.T) {
	for _, tc := range []struct {
		name string
		lt   cbpf.LinkType
		want layers.LinkType
	}{
		{"EN10MB", mustLinkType(t, "EN10MB"), layers.LinkTypeEthernet},
		{"RAW", mustLinkType(t, "RAW"), layers.LinkTypeRaw},
	} {
		if got := PcapLinkType(tc.lt); got != tc.want {
			t.Errorf("PcapLinkType(%s) = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func mustLinkType(t *testing.T, name string) cbpf.LinkType {
	t.Helper()
	lt, err := cbpf.ParseLinkType(name)
	if err != nil {
		t.Fatal(err)
	}
	return lt
}

// packets is a PacketDataSource of packets in memory.
type packets [][]byte

func (p *packets) ReadPacketData() ([]byte, gopacket.CaptureInfo, error) {
	if len(*p) == 0 {
		return nil, gopacket.CaptureInfo{}, io.EOF
	}
	data := (*p)[0]
	*p = (*p)[1:]
	return data, gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: len(data), Length: len(data)}, nil
}

// collect is a PacketWriter that keeps the packets.
type collect struct {
	pkts    []xdpcap.Packet
	flushes int
}

func (c *collect) WritePacket(p xdpcap.Packet) error {
	p.Data = append([]byte(nil), p.Data...)
	c.pkts = append(c.pkts, p)
	return nil
}

func (c *collect) Flush() error { c.flushes++; return nil }

func TestApply(t *testing.T) {
	fixture.RequireRoot(t)
	udp := fixture.UDP4("198.18.0.1", "198.18.0.2", 1000, 53, []byte("query"))
	syn := fixture.TCP4SYN("198.18.0.1", "198.18.0.2", 1000, 80)
	short := udp[:xdpcap.MinPacketLen-1] // XDP never sees it: libpcap's interpreter judges it
	input := [][]byte{udp, syn, udp, short, syn, udp}
	filter, err := Parse("udp", cbpf.LinkType(layers.LinkTypeEthernet), xdpcap.DefaultSnapLen)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                          string
		filter                        bool
		count                         int
		matched, packets, interpreted int
	}{
		{"udp", true, 0, 3, 6, 1},
		{"udp, count 2", true, 2, 2, 3, 0},
		{"everything", false, 0, 6, 6, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := packets(input)
			o := Options{SnapLen: 100, Count: tc.count, Output: &collect{}, Name: "in.pcap"}
			if tc.filter {
				o.Filter = filter
			}
			res, err := Apply(&src, o)
			if err != nil {
				t.Fatal(err)
			}
			out := o.Output.(*collect)
			if res.Matched != tc.matched || res.Packets != tc.packets || len(out.pkts) != tc.matched || out.flushes != 1 {
				t.Errorf("matched %d of %d, wrote %d, flushed %d times; want %d of %d, 1 flush",
					res.Matched, res.Packets, len(out.pkts), out.flushes, tc.matched, tc.packets)
			}
			for i, p := range out.pkts {
				if p.Length < len(p.Data) || len(p.Data) > 100 || !p.Time.Equal(time.Unix(1, 0)) {
					t.Errorf("packet %d: length %d, %d bytes, time %v", i, p.Length, len(p.Data), p.Time)
				}
			}
			if res.Interpreted != tc.interpreted {
				t.Errorf("interpreted %d packets, want %d", res.Interpreted, tc.interpreted)
			}
		})
	}
	// Cut to the file's snap length, the payload ("query", from byte 42
	// on) is gone: a filter on it matches only uncut packets.
	payload, err := Parse("udp[8:4] = 0x71756572", cbpf.LinkType(layers.LinkTypeEthernet), xdpcap.DefaultSnapLen)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		snap, matched, captured int
	}{{0, 1, len(udp)}, {44, 0, 0}, {40, 0, 0}} {
		t.Run(fmt.Sprintf("file snap length %d", tc.snap), func(t *testing.T) {
			src := packets([][]byte{udp})
			out := &collect{}
			res, err := Apply(&src, Options{Filter: payload, Output: out, FileSnapLen: tc.snap})
			if err != nil {
				t.Fatal(err)
			}
			if res.Matched != tc.matched || len(out.pkts) != tc.matched || tc.matched > 0 && len(out.pkts[0].Data) != tc.captured {
				t.Errorf("matched %d, wrote %v; want %d of %d bytes", res.Matched, out.pkts, tc.matched, tc.captured)
			}
		})
	}
	t.Run("read error", func(t *testing.T) {
		_, err := Apply(failing{}, Options{Name: "in.pcap"})
		if err == nil || err.Error() != "in.pcap: packet 1: broken" {
			t.Errorf("error %v, want in.pcap: packet 1: broken", err)
		}
	})
}

type failing struct{}

func (failing) ReadPacketData() ([]byte, gopacket.CaptureInfo, error) {
	return nil, gopacket.CaptureInfo{}, errors.New("broken")
}
