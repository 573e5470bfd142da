package cbpf

import (
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

func BenchmarkCompile(b *testing.B) {
	for b.Loop() {
		if _, err := Compile("ip6 and udp dst port 53 or tcp[tcpflags] & tcp-syn != 0", LinkTypeEthernet, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInterpret(b *testing.B) {
	prog, err := Compile("udp dst port 53 and ip[8] > 10", LinkTypeEthernet, 0)
	if err != nil {
		b.Fatal(err)
	}
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 53, fixture.DNSQuery("example.com", 1))
	b.Run("Interpret", func(b *testing.B) {
		for b.Loop() {
			if Interpret(prog, pkt, len(pkt)) == 0 {
				b.Fatal("no match")
			}
		}
	})
	b.Run("Filter.Run", func(b *testing.B) {
		f, err := NewFilter(prog)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if f.Run(pkt, len(pkt)) == 0 {
				b.Fatal("no match")
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	prog, err := Compile("ip6 and udp dst port 53 or tcp[tcpflags] & tcp-syn != 0", LinkTypeEthernet, 0)
	if err != nil {
		b.Fatal(err)
	}
	text, err := Format(prog)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Parse(text); err != nil {
			b.Fatal(err)
		}
	}
}
