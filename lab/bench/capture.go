package bench

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l4drop/l4drop/lab"
)

// CaptureRate is one capture measurement: a flood at full speed with a
// capture running on the server side.
type CaptureRate struct {
	Name string
	// Sent by the generator; Seen by the capture's filter (xdpcap: packets
	// that reached the hook; tcpdump: received by filter); Captured into
	// the file; Lost on the way (buffer full).
	Sent, Seen, Captured, Lost uint64
	Elapsed                    time.Duration
	// Rates is the rate captured of every round, in round order (0:
	// failed), for ratios to other rows measured in the same rounds.
	Rates []float64
	// Err is why the row could not be measured.
	Err error
}

// RatiosTo summarizes the per-round ratios of c's rate captured to ref's.
func (c CaptureRate) RatiosTo(ref CaptureRate) Ratio { return roundRatios(c.Rates, ref.Rates) }

// Mpps is the rate of packets captured.
func (c CaptureRate) Mpps() float64 {
	if c.Elapsed <= 0 {
		return 0
	}
	return float64(c.Captured) / c.Elapsed.Seconds() / 1e6
}

// LostPct is the share of packets the capture saw but could not record.
func (c CaptureRate) LostPct() float64 {
	if c.Captured+c.Lost == 0 {
		return 0
	}
	return 100 * float64(c.Lost) / float64(c.Captured+c.Lost)
}

// Capture is a capture row: Run floods a lab of its own for cfg.Duration
// with the capture running.
type Capture struct {
	Name string
	Run  func(ctx context.Context, cfg Config) (CaptureRate, error)
}

// MeasureCaptures measures every capture cfg.CaptureRounds times, in
// turns, and returns each one's median run (by rate captured).
func MeasureCaptures(ctx context.Context, cfg Config, captures []Capture, logf func(string, ...any)) ([]CaptureRate, error) {
	runs := make([][]CaptureRate, len(captures))
	for round := range max(cfg.CaptureRounds, 1) {
		for i, c := range captures {
			if len(runs[i]) > 0 && runs[i][0].Err != nil {
				continue
			}
			r, err := c.Run(ctx, cfg)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			r.Name = c.Name
			if err != nil {
				r.Err = err
				logf("round %d  %-60s failed: %v", round+1, c.Name, err)
			} else {
				logf("round %d  %-60s %8.3f Mpps captured, %d lost", round+1, c.Name, r.Mpps(), r.Lost)
			}
			runs[i] = append(runs[i], r)
		}
	}
	out := make([]CaptureRate, len(captures))
	for i, rs := range runs {
		sorted := slices.Clone(rs)
		slices.SortFunc(sorted, func(a, b CaptureRate) int { return cmp.Compare(a.Mpps(), b.Mpps()) })
		out[i] = sorted[len(sorted)/2]
		if rs[0].Err != nil {
			out[i] = rs[0]
			continue
		}
		for _, r := range rs {
			out[i].Rates = append(out[i].Rates, r.Mpps())
		}
	}
	return out, nil
}

func parseUint(b []byte) uint64 {
	n, _ := strconv.ParseUint(string(b), 10, 64)
	return n
}

var (
	xdpcapSummary = regexp.MustCompile(`(\d+) packets captured, (\d+) received by filter, (\d+) matched, (\d+) lost`)
	tcpdumpStats  = regexp.MustCompile(`(\d+) packets? captured\n(\d+) packets? received by filter\n(\d+) packets? dropped by kernel`)
)

// flood sends the configured traffic at full speed for cfg.CaptureDuration.
func flood(ctx context.Context, cfg Config, l *lab.Lab) (lab.Result, error) {
	var ts []lab.Template
	for _, s := range cfg.Traffic {
		t, err := lab.ParseTemplate(s)
		if err != nil {
			return lab.Result{}, err
		}
		ts = append(ts, t)
	}
	g, err := lab.NewGenerator(l.Inet, l.InetIf, ts, 1)
	if err != nil {
		return lab.Result{}, err
	}
	defer g.Close()
	return g.Run(ctx, lab.RunOptions{Duration: cfg.CaptureDuration, CPU: cfg.CPU + 1})
}

// Tcpdump is the capture row to beat: tcpdump on the server's veth (no
// XDP program: the frames take the stack's path, which tcpdump needs)
// writing every packet to a file.
func Tcpdump(dir string) Capture {
	return Capture{Name: "tcpdump on the veth, every packet", Run: func(ctx context.Context, cfg Config) (CaptureRate, error) {
		var res CaptureRate
		l, err := lab.New()
		if err != nil {
			return res, err
		}
		defer l.Close()
		out := filepath.Join(dir, "tcpdump-"+l.ID+".pcap")
		defer os.Remove(out)
		var stderr bytes.Buffer
		c := l.Server.Command("tcpdump", "-n", "-i", l.ServerIf, "-w", out)
		c.Stderr = &stderr
		err = captureDuring(ctx, cfg, l, c, &stderr, &res, func(s []byte) error {
			m := tcpdumpStats.FindSubmatch(s)
			if m == nil {
				return fmt.Errorf("tcpdump printed no statistics: %s", s)
			}
			res.Captured, res.Seen, res.Lost = parseUint(m[1]), parseUint(m[2]), parseUint(m[3])
			return nil
		})
		if err != nil {
			return res, err
		}
		if err := checkFile(out, res.Captured); err != nil {
			return res, fmt.Errorf("tcpdump: %w", err)
		}
		return res, nil
	}}
}

// captureDuring starts the capture command, floods, stops the capture with
// SIGINT and parses its statistics.
func captureDuring(ctx context.Context, cfg Config, l *lab.Lab, c *exec.Cmd, stderr *bytes.Buffer, res *CaptureRate, parse func([]byte) error) error {
	awayFrom(c, cfg.CPU)
	if err := c.Start(); err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			c.Process.Kill()
			c.Wait()
		}
	}()
	// Both print when they are ready; a fixed pause is simpler and enough.
	time.Sleep(time.Second)
	r, err := flood(ctx, cfg, l)
	if err != nil {
		return err
	}
	res.Sent, res.Elapsed = r.Sent, r.Elapsed
	time.Sleep(300 * time.Millisecond) // let the capture drain its buffer
	c.Process.Signal(os.Interrupt)
	err = c.Wait()
	stopped = true
	if perr := parse(stderr.Bytes()); perr != nil {
		return fmt.Errorf("%w (exit: %v)", perr, err)
	}
	return nil
}

// awayFrom makes c run on every CPU but cpu, with taskset, when there is
// another: the flood and the receiving veth's NAPI keep cpu busy, and a
// capture's reader scheduled there would slow the flood it reads, which
// says nothing about the capture. tcpdump and xdpcap are treated alike.
func awayFrom(c *exec.Cmd, cpu int) {
	taskset, err := exec.LookPath("taskset")
	if err != nil || runtime.NumCPU() < 2 {
		return
	}
	var others []string
	for i := range runtime.NumCPU() {
		if i != cpu {
			others = append(others, strconv.Itoa(i))
		}
	}
	c.Args = append([]string{"taskset", "-c", strings.Join(others, ","), c.Path}, c.Args[1:]...)
	c.Path = taskset
}
