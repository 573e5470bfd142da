package xdpcap

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/lab"
)

// BenchmarkCaptureFlood floods a veth with 64-byte UDP to port 9 for two
// seconds (live-frames generator) while the Go program on the other end
// drops them and a capture of every dropped packet writes them to a pcap
// file. It reports the rates sent, seen by the XDP program (the veth
// drops some when its ring overflows) and captured, and the records lost.
// b.N is ignored: one flood per run.
func BenchmarkCaptureFlood(b *testing.B) {
	fixture.RequireRoot(b)
	for _, bc := range []struct {
		name string
		perf bool
	}{{"ringbuf", false}, {"perf", true}} {
		b.Run("xdpcap-"+bc.name, func(b *testing.B) {
			l := fixture.Lab(b)
			hook, err := NewHook()
			if err != nil {
				b.Fatal(err)
			}
			defer hook.Close()
			fixture.AttachXDP(b, l.Server, l.ServerIndex, goProgram(b, hook))
			c, err := Start([]*ebpf.Map{hook}, Options{Actions: []Action{Drop}, Perf: bc.perf})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			f, err := os.Create(filepath.Join(b.TempDir(), "flood.pcap"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			w, err := NewPcapWriter(f, layers.LinkTypeEthernet, DefaultSnapLen)
			if err != nil {
				b.Fatal(err)
			}
			written := 0
			done := make(chan error, 1)
			go func() {
				var p Packet
				for {
					err := c.ReadInto(&p)
					if errors.Is(err, io.EOF) || errors.Is(err, ErrClosed) {
						done <- w.Flush()
						return
					}
					if err == nil {
						err = w.WritePacket(p)
					}
					if err != nil {
						done <- err
						return
					}
					written++
				}
			}()

			r := flood(b, l)
			time.Sleep(200 * time.Millisecond) // the reader catches up
			if err := c.Detach(); err != nil {
				b.Fatal(err)
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			s, err := c.Stats()
			if err != nil {
				b.Fatal(err)
			}
			t := s.Total()
			secs := r.Elapsed.Seconds()
			b.ReportMetric(float64(r.Sent)/secs/1e6, "sent-Mpps")
			b.ReportMetric(float64(written)/secs/1e6, "captured-Mpps")
			b.ReportMetric(float64(t.Seen)/secs/1e6, "seen-Mpps")
			b.ReportMetric(float64(t.Lost), "lost")
			if uint64(written)+t.Lost != t.Matched {
				b.Errorf("%d packets written and %d lost, but %d matched", written, t.Lost, t.Matched)
			}
		})
	}
}

var tcpdumpStats = regexp.MustCompile(`(\d+) packets? captured\n(\d+) packets? received by filter\n(\d+) packets? dropped by kernel`)

// BenchmarkCaptureFloodTcpdump is the same flood captured by tcpdump on
// the receiving veth, whose XDP program passes everything (tcpdump needs
// the stack's path).
func BenchmarkCaptureFloodTcpdump(b *testing.B) {
	fixture.RequireRoot(b)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		b.Skip("tcpdump missing")
	}
	l := fixture.Lab(b)
	fixture.AttachXDP(b, l.Server, l.ServerIndex, fixture.PassProgram(b))
	out := filepath.Join(b.TempDir(), "tcpdump.pcap")
	var stderr bytes.Buffer
	cmd := l.Server.Command("tcpdump", "-n", "-i", l.ServerIf, "-w", out, "udp port 9")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	for range 100 {
		if strings.Contains(stderr.String(), "listening on") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := flood(b, l)
	time.Sleep(200 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	m := tcpdumpStats.FindStringSubmatch(stderr.String())
	if m == nil {
		b.Fatalf("tcpdump printed no statistics:\n%s", &stderr)
	}
	captured, _ := strconv.ParseUint(m[1], 10, 64)
	dropped, _ := strconv.ParseUint(m[3], 10, 64)
	secs := r.Elapsed.Seconds()
	b.ReportMetric(float64(r.Sent)/secs/1e6, "sent-Mpps")
	b.ReportMetric(float64(captured)/secs/1e6, "captured-Mpps")
	b.ReportMetric(float64(dropped), "lost")
}

// flood sends UDP to port 9 from the lab's client side at full speed for
// two seconds, from CPU 1, and returns what was sent.
func flood(b *testing.B, l *fixture.LabPair) lab.Result {
	b.Helper()
	tpl, err := lab.ParseTemplate("udp,port=9")
	if err != nil {
		b.Fatal(err)
	}
	g, err := lab.NewGenerator(l.Client, l.ClientIf, []lab.Template{tpl}, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	b.ResetTimer()
	r, err := g.Run(context.Background(), lab.RunOptions{Duration: 2 * time.Second, CPU: 1})
	if err != nil {
		b.Fatal(err)
	}
	return r
}
