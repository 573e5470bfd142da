package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
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
	// OnCPU is the CPU time the flood got, as DropRate's (0: not known).
	OnCPU time.Duration
	// Rates is the rate captured per CPU-second (CPUMpps) of every round,
	// in round order, for ratios to other rows measured in the same rounds.
	Rates []float64
	// Records is the number of packets in the capture's file.
	Records uint64
	// Counted is what the XDP program counted of the packets the capture
	// is after (L4Drop's rule counter), to check the file against; 0 where
	// the program counts nothing.
	Counted uint64
	// Runs are every round's measurements, in round order (MeasureCaptures).
	Runs []CaptureRate
	// ReaderCPU is the CPU time the capture command had during the flood,
	// ReaderWaited how long its threads were ready to run but waited for
	// a CPU (the scheduler's accounting; 0 where not known): a capture
	// that loses packets while its reader waits lost them to the
	// machine's other work.
	ReaderCPU, ReaderWaited time.Duration
	// OwnFlood says the row's packets were not the generator's flood
	// (XDPcapL4DropTestRuns): its rate is not comparable to tcpdump's.
	OwnFlood bool
	// Err is why the row could not be measured.
	Err error
}

// RatiosTo summarizes the per-round ratios of c's rate captured to ref's.
func (c CaptureRate) RatiosTo(ref CaptureRate) Ratio { return roundRatios(c.Rates, ref.Rates) }

// Mpps is the rate of packets captured.
func (c CaptureRate) Mpps() float64 { return mpps(c.Captured, c.Elapsed) }

// CPUMpps is the rate of packets captured per second the flood had its
// CPU, as DropRate's: the XDP side of a capture, or the stack's path for
// tcpdump, runs there; the capture's reader runs on another CPU and shows
// in Lost if it cannot keep up. It is Mpps where the CPU time is not known.
func (c CaptureRate) CPUMpps() float64 { return cpuMpps(c.Captured, c.Elapsed, c.OnCPU) }

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
				logf("round %d  %-60s %8.3f Mpps captured, %8.3f per CPU-second, %d lost; reader on CPU %s, waiting %s",
					round+1, c.Name, r.Mpps(), r.CPUMpps(), r.Lost, r.ReaderCPU.Round(time.Millisecond), r.ReaderWaited.Round(time.Millisecond))
			}
			runs[i] = append(runs[i], r)
		}
	}
	out := make([]CaptureRate, len(captures))
	for i, rs := range runs {
		var rates []float64
		out[i], rates = medianRound(rs, CaptureRate.CPUMpps)
		if rs[0].Err != nil {
			out[i] = rs[0]
			continue
		}
		out[i].Rates, out[i].Runs = rates, rs
	}
	return out, nil
}

// CaptureTarget is what a capture row must do in every round: lose
// nothing (and, where the XDP program counts the packets, put as many in
// the file as it counted) at MinRatio times tcpdump's rate or more.
type CaptureTarget struct {
	// MinRatio is the least rate per CPU-second against tcpdump's in the
	// same round.
	MinRatio float64
}

// DefaultCaptureTarget is the issue's: 0 lost at 4 times tcpdump's rate.
var DefaultCaptureTarget = CaptureTarget{MinRatio: 4}

// Check counts the rounds of c that meet the target against ref's round
// of the same number, and says for each what it measured.
func (t CaptureTarget) Check(c, ref CaptureRate) (met int, rounds []string) {
	for i, r := range c.Runs {
		var ratio float64
		if i < len(ref.Runs) && ref.Runs[i].Err == nil && ref.Runs[i].CPUMpps() > 0 {
			ratio = r.CPUMpps() / ref.Runs[i].CPUMpps()
		}
		ok := r.Err == nil && r.Lost == 0 && r.Captured > 0 && r.Records == r.Captured
		s := fmt.Sprintf("%.3f Mpps, %d lost", r.Mpps(), r.Lost)
		if !c.OwnFlood {
			ok = ok && ratio >= t.MinRatio
			s = fmt.Sprintf("%.1f×, %d lost", ratio, r.Lost)
		}
		if r.Counted > 0 {
			ok = ok && r.Counted == r.Records
			s += fmt.Sprintf(", %d of %d counted in the file", r.Records, r.Counted)
		}
		if r.ReaderCPU > 0 && r.Elapsed > 0 {
			s += fmt.Sprintf(", reader on a CPU %.0f%% and waiting for one %.0f%% of the flood",
				100*r.ReaderCPU.Seconds()/r.Elapsed.Seconds(), 100*r.ReaderWaited.Seconds()/r.Elapsed.Seconds())
		}
		if r.Err != nil {
			s = "failed"
		}
		if ok {
			met++
		}
		rounds = append(rounds, s)
	}
	return met, rounds
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
	sirq0, ok0 := softirqTime(cfg.CPU)
	r, err := g.Run(ctx, lab.RunOptions{Duration: cfg.CaptureDuration, CPU: cfg.CPU + 1})
	sirq1, ok1 := softirqTime(cfg.CPU)
	if ok0 && ok1 && r.OnCPU > 0 {
		r.OnCPU += sirq1 - sirq0
	} else {
		r.OnCPU = 0
	}
	return r, err
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
		var stderr lab.Output
		c := l.Server.Command("tcpdump", "-n", "-i", l.ServerIf, "-w", out)
		c.Stderr = &stderr
		ready := func() bool { return bytes.Contains(stderr.Bytes(), []byte("listening on")) }
		err = captureDuring(ctx, cfg, l, nil, c, &stderr, ready, &res, func(s []byte) error {
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

// captureDuring starts the capture command, floods (send; nil: the
// generator's flood of l), stops the capture with SIGINT and parses its
// statistics.
func captureDuring(ctx context.Context, cfg Config, l *lab.Lab, send func() (lab.Result, error), c *exec.Cmd, stderr *lab.Output, ready func() bool, res *CaptureRate, parse func([]byte) error) error {
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
	deadline := time.Now().Add(5 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not capturing after 5s: %s", stderr.Bytes())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if send == nil {
		send = func() (lab.Result, error) { return flood(ctx, cfg, l) }
	}
	cpu0, wait0, ok0 := procSchedStat(c.Process.Pid)
	r, err := send()
	if err != nil {
		return err
	}
	if cpu1, wait1, ok1 := procSchedStat(c.Process.Pid); ok0 && ok1 {
		res.ReaderCPU, res.ReaderWaited = cpu1-cpu0, wait1-wait0
	}
	res.Sent, res.Elapsed, res.OnCPU = r.Sent, r.Elapsed, r.OnCPU
	time.Sleep(300 * time.Millisecond) // let the capture drain its buffer
	c.Process.Signal(os.Interrupt)
	err = c.Wait()
	stopped = true
	if perr := parse(stderr.Bytes()); perr != nil {
		return fmt.Errorf("%w (exit: %w)", perr, err)
	}
	return nil
}

// procSchedStat sums the time on CPU and the time waiting for one of a
// process's threads (/proc/PID/task/*/schedstat). Under taskset the
// capture command is taskset itself first, then the command it became:
// the same process.
func procSchedStat(pid int) (onCPU, waited time.Duration, ok bool) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, 0, false
	}
	for _, t := range tasks {
		buf, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		f := strings.Fields(string(buf))
		if len(f) < 2 {
			continue
		}
		run, err1 := strconv.ParseInt(f[0], 10, 64)
		wait, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		onCPU += time.Duration(run)
		waited += time.Duration(wait)
		ok = true
	}
	return onCPU, waited, ok
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

// captureVsTarget says how capture row c did against DefaultCaptureTarget,
// tcpdump's row being ref: the median ratio, the rounds that met the
// target and each round's figures.
func captureVsTarget(c, ref CaptureRate) string {
	met, rounds := DefaultCaptureTarget.Check(c, ref)
	median := c.RatiosTo(ref).format(1, "×")
	if c.OwnFlood {
		median = fmt.Sprintf("%.3f Mpps", c.Mpps())
	}
	return fmt.Sprintf("%s, %d lost (median run); %d of %d rounds meet it: %s",
		median, c.Lost, met, len(c.Runs), strings.Join(rounds, "; "))
}
