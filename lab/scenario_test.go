package lab

import (
	"errors"
	"slices"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// TestTemplateFields decodes frames of templates with the fields attack
// tools fix, with gopacket, and checks each field.
func TestTemplateFields(t *testing.T) {
	tests := []struct {
		spec  string
		check func(t *testing.T, p gopacket.Packet)
	}{
		{"syn,port=443,ttl=111,ipid=54321,window=1024,tcpopts=none,nodf", func(t *testing.T, p gopacket.Packet) {
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if ip.TTL != 111 || ip.Id != 54321 || ip.Flags&layers.IPv4DontFragment != 0 || tcp.Window != 1024 || len(tcp.Options) != 0 || !tcp.SYN || tcp.DstPort != 443 {
				t.Errorf("ttl %d id %d flags %v window %d options %v", ip.TTL, ip.Id, ip.Flags, tcp.Window, tcp.Options)
			}
		}},
		{"syn,v6,tcpopts=linux,ttl=57", func(t *testing.T, p gopacket.Packet) {
			ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			var kinds []layers.TCPOptionKind
			for _, o := range tcp.Options {
				kinds = append(kinds, o.OptionType)
			}
			want := []layers.TCPOptionKind{layers.TCPOptionKindMSS, layers.TCPOptionKindSACKPermitted, layers.TCPOptionKindTimestamps, layers.TCPOptionKindNop, layers.TCPOptionKindWindowScale}
			if ip.HopLimit != 57 || !slices.Equal(kinds, want) {
				t.Errorf("hop limit %d, options %v", ip.HopLimit, kinds)
			}
		}},
		{"syn,tcpopts=windows,len=60", func(t *testing.T, p gopacket.Packet) {
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if ip.Length != 60 || len(tcp.Options) != 6 || len(tcp.Payload) != 8 {
				t.Errorf("length %d, %d options, %d payload bytes", ip.Length, len(tcp.Options), len(tcp.Payload))
			}
		}},
		{"udp,port=27015,payload=deadbeef,size=32,randpayload,len=100", func(t *testing.T, p gopacket.Packet) {
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			udp := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if ip.Length != 100 || udp.DstPort != 27015 || string(udp.Payload[:4]) != "\xde\xad\xbe\xef" {
				t.Errorf("length %d, port %d, payload % x", ip.Length, udp.DstPort, udp.Payload[:4])
			}
		}},
		{"dns,qname=*9.example.com,qtype=28,edns,flags=0", func(t *testing.T, p gopacket.Packet) {
			dns := p.Layer(layers.LayerTypeDNS).(*layers.DNS)
			if len(dns.Questions) != 1 || dns.Questions[0].Type != layers.DNSTypeAAAA || len(dns.Questions[0].Name) != 9+12 || dns.RD || len(dns.Additionals) != 1 || dns.Additionals[0].Type != layers.DNSTypeOPT {
				t.Errorf("questions %v, RD %v, additionals %v", dns.Questions, dns.RD, dns.Additionals)
			}
		}},
		{"dns,response,name=x.example,qtype=255,answers=3,v6", func(t *testing.T, p gopacket.Packet) {
			udp := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			dns := p.Layer(layers.LayerTypeDNS).(*layers.DNS)
			if udp.SrcPort != 53 || !dns.QR || len(dns.Answers) != 3 {
				t.Errorf("source port %d, QR %v, %d answers", udp.SrcPort, dns.QR, len(dns.Answers))
			}
		}},
		{"ntp,monlist", func(t *testing.T, p gopacket.Packet) {
			udp := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if udp.SrcPort != 123 || len(udp.Payload) != 440 || udp.Payload[0] != 0xd7 || udp.Payload[3] != 42 {
				t.Errorf("source port %d, %d payload bytes, % x", udp.SrcPort, len(udp.Payload), udp.Payload[:4])
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			tpl, err := ParseTemplate(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			frames := Frames([]Template{tpl}, 1, 20)
			distinct := map[string]bool{}
			for _, f := range frames {
				if err := matchTemplate(tpl, f); err != nil {
					t.Fatal(err)
				}
				distinct[string(f)] = true
				p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
				if el := p.ErrorLayer(); el != nil {
					t.Fatalf("decode: %v", el.Error())
				}
				tt.check(t, p)
			}
			if len(distinct) < 19 {
				t.Errorf("%d distinct frames of 20", len(distinct))
			}
		})
	}
	for _, spec := range []string{"syn,tcpopts=solaris", "udp,payload=xyz", "syn,len=20", "dns,name=*99.x", "udp,ttl=256", "udp,len=10"} {
		if _, err := ParseTemplate(spec); !errors.Is(err, ErrSpec) {
			t.Errorf("ParseTemplate(%q) = %v, want ErrSpec", spec, err)
		}
	}
}

// TestScenarios checks that every scenario parses, and that its attack
// shares the legitimate traffic's destination, protocol and port.
func TestScenarios(t *testing.T) {
	if len(Scenarios()) != 10 {
		t.Fatalf("%d scenarios, want 10", len(Scenarios()))
	}
	type key struct {
		v6          bool
		proto       byte
		dport, sprt uint16
	}
	keys := func(ts []Template) map[key]bool {
		m := map[key]bool{}
		for _, f := range Frames(ts, 1, 200) {
			lo, ok := parseLayout(f)
			if !ok {
				t.Fatalf("bad frame % x", f)
			}
			k := key{v6: lo.v6, proto: lo.proto}
			// Reflected traffic goes to random ports from a fixed one.
			sp, dp := uint16(f[lo.l4])<<8|uint16(f[lo.l4+1]), uint16(f[lo.l4+2])<<8|uint16(f[lo.l4+3])
			if sp == 53 || sp == 123 {
				k.sprt = sp
			} else {
				k.dport = dp
			}
			m[k] = true
		}
		return m
	}
	for _, s := range Scenarios() {
		attack, legit, err := s.Templates()
		if err != nil {
			t.Fatal(err)
		}
		a, l := keys(attack), keys(legit)
		for k := range a {
			if !l[k] {
				t.Errorf("%s: attack %+v: no legitimate traffic shares it", s.Name, k)
			}
		}
		if got, err := LookupScenario(s.Name); err != nil || got.Name != s.Name {
			t.Errorf("LookupScenario(%q) = %v, %v", s.Name, got.Name, err)
		}
	}
	if _, err := LookupScenario("smurf"); !errors.Is(err, ErrScenario) {
		t.Errorf("LookupScenario(smurf) = %v, want ErrScenario", err)
	}
}
