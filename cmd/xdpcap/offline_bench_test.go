package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/xdpcap"
)

// BenchmarkOffline compares `xdpcap -r IN -w OUT udp` with `tcpdump -r IN
// -w OUT udp` on a capture of the corpus's Ethernet frames over and over,
// for several sizes: it reports each one's ns per packet (whole command,
// start-up included) and xdpcap's time over tcpdump's.
func BenchmarkOffline(b *testing.B) {
	fixture.RequireRoot(b)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		b.Skip("tcpdump missing")
	}
	bin := xdpcapBin(b)
	var frames []fixture.CapturedPacket
	for _, c := range fixture.CorpusCaptures(b) {
		if c.LinkType == layers.LinkTypeEthernet {
			frames = append(frames, c.Packets...)
		}
	}
	if len(frames) == 0 {
		b.Skip("no Ethernet captures in the corpus")
	}
	dir := b.TempDir()
	for _, n := range []int{len(frames), 100000} {
		in := filepath.Join(dir, "in.pcap")
		writeFrames(b, in, frames, n)
		b.Run(strconv.Itoa(n)+"-packets", func(b *testing.B) {
			var xd, td time.Duration
			for b.Loop() {
				td += timeCommand(b, "tcpdump", "-r", in, "-w", filepath.Join(dir, "t.pcap"), "udp")
				xd += timeCommand(b, bin, "-r", in, "-w", filepath.Join(dir, "x.pcap"), "udp")
			}
			runs := float64(b.N)
			b.ReportMetric(float64(td.Nanoseconds())/runs/float64(n), "tcpdump-ns/pkt")
			b.ReportMetric(float64(xd.Nanoseconds())/runs/float64(n), "xdpcap-ns/pkt")
			b.ReportMetric(float64(xd)/float64(td), "xdpcap/tcpdump")
		})
	}
}

// writeFrames writes n packets, frames over and over, to a pcap file.
func writeFrames(b *testing.B, path string, frames []fixture.CapturedPacket, n int) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w, err := xdpcap.NewPcapWriter(f, layers.LinkTypeEthernet, xdpcap.DefaultSnapLen)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		p := frames[i%len(frames)]
		if err := w.WritePacket(xdpcap.Packet{Time: p.Time, Length: p.Length, Data: p.Data}); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
}

func timeCommand(b *testing.B, name string, args ...string) time.Duration {
	b.Helper()
	start := time.Now()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out)
	}
	return time.Since(start)
}
