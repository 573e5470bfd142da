package lab

import (
	"context"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// BenchmarkGenerator measures the generator's rate into a veth whose far
// end drops everything with XDP (sender and receiver on one CPU).
func BenchmarkGenerator(b *testing.B) {
	for _, tt := range []struct{ name, spec string }{
		{"udp-fixed", "udp,port=9,sport=1"},
		{"dns-random-name", "dns,name=*.attack.example"},
		{"syn6-vlan", "syn,port=80,v6,vlan=100"},
	} {
		b.Run(tt.name, func(b *testing.B) {
			l := newLab(b)
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
			if err != nil {
				b.Fatal(err)
			}
			defer prog.Close()
			err = l.Server.Do(func() error {
				lk, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: l.ServerIndex})
				if err == nil {
					b.Cleanup(func() { lk.Close() })
				}
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			g, err := NewGenerator(l.Inet, l.InetIf, mustTemplates(b, tt.spec), 1)
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			b.ResetTimer()
			res, err := g.Run(context.Background(), RunOptions{Count: uint64(b.N), CPU: 1})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(res.PPS/1e6, "Mpps")
		})
	}
}
