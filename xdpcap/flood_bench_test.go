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
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

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

// BenchmarkCaptureTestRunFlood is BenchmarkCaptureFlood without the veth:
// BPF_PROG_TEST_RUN runs the hooked program over a 64-byte UDP datagram to
// port 9, repeated in the kernel, from a thread pinned to CPU 1, for two
// seconds, while the capture's reader writes every dropped packet to a
// pcap file. The packets come faster than from the live-frames generator
// (no veth, no page allocation), which makes it the harder test of the
// reader, and it runs where live frames are not permitted. Set
// XDPCAP_FLOOD_DIR to write the file elsewhere than the test's temporary
// directory (a tmpfs, to take the disk's file system out of the figure).
func BenchmarkCaptureTestRunFlood(b *testing.B) {
	fixture.RequireRoot(b)
	for _, bc := range []struct {
		name string
		perf bool
	}{{"ringbuf", false}, {"perf", true}} {
		b.Run(bc.name, func(b *testing.B) {
			runner := fixture.NewXDPRunner(b)
			hook, err := NewHook()
			if err != nil {
				b.Fatal(err)
			}
			defer hook.Close()
			prog := goProgram(b, hook)
			c, err := Start([]*ebpf.Map{hook}, Options{Actions: []Action{Drop}, Perf: bc.perf})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			// The output file's directory: XDPCAP_FLOOD_DIR, say a tmpfs,
			// or the test's temporary directory. What the file system
			// costs a byte is much of what the reader costs a record.
			dir := os.Getenv("XDPCAP_FLOOD_DIR")
			if dir == "" {
				dir = b.TempDir()
			}
			f, err := os.CreateTemp(dir, "flood-*.pcap")
			if err != nil {
				b.Fatal(err)
			}
			defer os.Remove(f.Name())
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

			pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 9, make([]byte, 18))
			sent, elapsed := testRunFlood(b, runner, prog, pkt, 2*time.Second)
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
			secs := elapsed.Seconds()
			b.ReportMetric(float64(sent)/secs/1e6, "sent-Mpps")
			b.ReportMetric(float64(written)/secs/1e6, "captured-Mpps")
			b.ReportMetric(float64(t.Lost), "lost")
			b.ReportMetric(float64(written), "captured")
			// The kernel may run the program once more than asked (a
			// warm-up run), never less.
			if uint64(written)+t.Lost != t.Matched || t.Matched < sent {
				b.Errorf("%d packets sent, %d matched, %d written, %d lost", sent, t.Matched, written, t.Lost)
			}
		})
	}
}

// testRunFlood runs prog over pkt in rounds of repeated test runs, on a
// thread pinned to CPU 1 when there is one, for d; it returns the runs.
func testRunFlood(b *testing.B, runner *fixture.XDPRunner, prog *ebpf.Program, pkt []byte, d time.Duration) (uint64, time.Duration) {
	b.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if runtime.NumCPU() > 1 {
		var set unix.CPUSet
		set.Set(1)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			b.Fatal(err)
		}
	}
	const round = 1 << 16
	var sent uint64
	start := time.Now()
	for time.Since(start) < d {
		if _, err := runner.Repeat(prog, pkt, round); err != nil {
			b.Fatal(err)
		}
		sent += round
	}
	return sent, time.Since(start)
}

// BenchmarkCaptureDrain measures the capture reader's cost per record,
// which decides how fast a flood it keeps up with: test runs fill the
// ring buffer with 200,000 records of 64-byte packets (not timed), then
// ReadInto and the pcap writer, into io.Discard, take them out (timed).
// It reports the wall time and the reading thread's CPU time per record,
// the figure that depends least on what else runs on the machine.
func BenchmarkCaptureDrain(b *testing.B) {
	fixture.RequireRoot(b)
	runner := fixture.NewXDPRunner(b)
	hook, err := NewHook()
	if err != nil {
		b.Fatal(err)
	}
	defer hook.Close()
	prog := goProgram(b, hook)
	c, err := Start([]*ebpf.Map{hook}, Options{Actions: []Action{Drop}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	w, err := NewPcapWriter(io.Discard, layers.LinkTypeEthernet, DefaultSnapLen)
	if err != nil {
		b.Fatal(err)
	}
	pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 9, make([]byte, 18))
	const batch = 200000
	var p Packet
	records := 0
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu time.Duration
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		if _, err := runner.Repeat(prog, pkt, batch); err != nil {
			b.Fatal(err)
		}
		cpu -= threadCPU(b)
		b.StartTimer()
		for range batch {
			if err := c.ReadInto(&p); err != nil {
				b.Fatal(err)
			}
			if err := w.WritePacket(p); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		cpu += threadCPU(b)
		b.StartTimer()
		records += batch
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(records), "ns/record")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(records), "cpu-ns/record")
	if s, err := c.Stats(); err != nil || s.Total().Lost != 0 {
		b.Errorf("lost records: %+v %v", s.Total(), err)
	}
}

// threadCPU returns the CPU time the calling thread has used.
func threadCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
