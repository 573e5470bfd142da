package interop

import (
	"bufio"
	"encoding/json"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/sflow"
)

// goflow2Flow is the part of a goflow2 JSON flow message the test reads.
type goflow2Flow struct {
	Type         string `json:"type"`
	SamplingRate uint64 `json:"sampling_rate"`
	InIf         uint64 `json:"in_if"`
	OutIf        uint64 `json:"out_if"`
	DstPort      int    `json:"dst_port"`
	Proto        string `json:"proto"`
	Bytes        uint64 `json:"bytes"`
	Packets      uint64 `json:"packets"`
}

// goflow2Path finds goflow2, which `make deps` installs with `go install`
// into GOPATH/bin (often not on PATH).
func goflow2Path(tb testing.TB) string {
	tb.Helper()
	if p, err := exec.LookPath("goflow2"); err == nil {
		return p
	}
	p := filepath.Join(build.Default.GOPATH, "bin", "goflow2")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	msg := "goflow2 not installed (make deps installs it: go install github.com/netsampler/goflow2/v2/cmd/goflow2)"
	if fixture.InCI() {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

// TestGoflow2Synthetic runs goflow2 as docs/sflow.md configures it (sFlow
// in, JSON lines to a file) and checks that it turns every flow sample into
// a flow message with L4Drop's sampling rate, input interface and, on
// dropped packets only, the discard code as output interface.
func TestGoflow2Synthetic(t *testing.T) {
	bin := goflow2Path(t)
	port, httpPort := freeUDPPort(t), freeTCPPort(t)
	out := filepath.Join(t.TempDir(), "goflow2.json")
	cmd := exec.Command(bin,
		"-listen", fmt.Sprintf("sflow://127.0.0.1:%d", port),
		"-format", "json", "-transport", "file", "-transport.file", out,
		"-addr", fmt.Sprintf("127.0.0.1:%d", httpPort), "-loglevel", "warn")
	logf, err := os.Create(filepath.Join(t.TempDir(), "goflow2.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := startGroup(t, cmd, syscall.SIGTERM); err != nil {
		t.Fatalf("goflow2: %v", err)
	}
	// goflow2 opens its sFlow socket before its HTTP server: once /metrics
	// answers, it receives.
	ready := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort))
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(ready) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("goflow2 does not answer on :%d after 20 s: %v; log:\n%s", httpPort, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}

	e := newExporter(t, sflow.Config{Collectors: []string{fmt.Sprintf("127.0.0.1:%d", port)}})
	stop := runExporter(t, e)
	// On a loaded machine goflow2 can fall behind by more than its socket
	// buffer holds, and the kernel drops what does not fit: the feed waits
	// for it to catch up after every batch. Its file can stay a few flows
	// short of the samples sent until it exits (seen: 2 to 6 short for
	// 10 s at each batch), so a count that has stopped growing is caught
	// up too; the count at the end is checked below.
	sent := feedSynthetic(t, e, traffic, func(samples int) {
		last, since := -1, time.Now()
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			n := len(readGoflow2(t, out))
			if n >= samples {
				return
			}
			if n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > 300*time.Millisecond {
				return
			}
		}
	})
	stop()
	want := int(e.Stats().Samples)

	var flows []goflow2Flow
	deadline := time.Now().Add(20 * time.Second)
	for {
		flows = readGoflow2(t, out)
		if len(flows) >= want || time.Now().After(deadline) || (len(flows) >= want*99/100 && time.Now().After(deadline.Add(-15*time.Second))) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// UDP on a loaded loopback may lose a datagram into goflow2's socket:
	// the test is about what goflow2 makes of what it receives.
	if len(flows) > want || len(flows) < want*99/100 {
		log, _ := os.ReadFile(logf.Name())
		t.Fatalf("goflow2 wrote %d flow messages, the exporter sent %d samples (exporter %+v; kernel drops on goflow2's socket: %s); log:\n%s",
			len(flows), want, e.Stats(), udpDrops(t, port), log)
	}
	perPort := map[int]uint64{}
	for _, f := range flows {
		if f.Type != "SFLOW_5" || f.SamplingRate != sampleRate || f.InIf != 2 {
			t.Fatalf("flow %+v: want type SFLOW_5, sampling_rate %d, in_if 2", f, sampleRate)
		}
		wantOut := uint64(0)
		if traffic[f.DstPort] {
			wantOut = 0x40000000 | sflow.DiscardACL
		}
		if f.OutIf != wantOut {
			t.Errorf("dst port %d: out_if %#x, want %#x", f.DstPort, f.OutIf, wantOut)
		}
		perPort[f.DstPort] += f.SamplingRate
	}
	for port, n := range sent {
		if got := perPort[port]; got < n*3/4 || got > n*5/4 {
			t.Errorf("dst port %d: goflow2's samples x rate = %d, sent %d", port, got, n)
		}
	}
}

func freeTCPPort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func readGoflow2(tb testing.TB, path string) []goflow2Flow {
	tb.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var flows []goflow2Flow
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var fl goflow2Flow
		if err := json.Unmarshal(sc.Bytes(), &fl); err != nil {
			// The last line may be half written.
			continue
		}
		flows = append(flows, fl)
	}
	return flows
}

// udpDrops reports the kernel's drop counter of the IPv4 UDP socket bound
// to port, from /proc/net/udp, to tell datagrams lost on the way from ones
// a collector received and misread.
func udpDrops(tb testing.TB, port int) string {
	tb.Helper()
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return err.Error()
	}
	local := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 13 && strings.HasSuffix(f[1], local) {
			return f[12]
		}
	}
	return "no socket on the port"
}
