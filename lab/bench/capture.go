package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/l4drop/l4drop/lab"
)

// CaptureRate is one capture measurement: a flood at full speed with a
// capture running on the server side.
type CaptureRate struct {
	Name                 string
	Sent, Captured, Lost uint64
	Elapsed              time.Duration
}

// Mpps is the rate of packets captured.
func (c CaptureRate) Mpps() float64 { return float64(c.Captured) / c.Elapsed.Seconds() / 1e6 }

// LostPct is the share of packets the capture saw but could not record.
func (c CaptureRate) LostPct() float64 {
	if c.Captured+c.Lost == 0 {
		return 0
	}
	return 100 * float64(c.Lost) / float64(c.Captured+c.Lost)
}

var (
	xdpcapSummary  = regexp.MustCompile(`(\d+) packets captured, (\d+) received by filter, (\d+) matched, (\d+) lost`)
	tcpdumpCapture = regexp.MustCompile(`(\d+) packets? captured`)
	tcpdumpDropped = regexp.MustCompile(`(\d+) packets? dropped by kernel`)
)

// flood sends the configured traffic at full speed for cfg.Duration.
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
	return g.Run(ctx, lab.RunOptions{Duration: cfg.Duration, CPU: cfg.CPU + 1})
}

// XDPcapRate measures xdpcap capturing every packet L4Drop (obj, the
// 1-rule set) drops, written to a file.
func (t Tools) XDPcapRate(ctx context.Context, cfg Config, obj, dir string) (CaptureRate, error) {
	res := CaptureRate{Name: "xdpcap on L4Drop's hook, every dropped packet"}
	l, err := lab.New()
	if err != nil {
		return res, err
	}
	defer l.Close()
	_, unload, err := t.Load(l, obj)
	if err != nil {
		return res, err
	}
	defer unload()
	hook := filepath.Join("/sys/fs/bpf/l4drop", l.ServerIf+"@"+l.Server.Name, "xdpcap_hook")
	out := filepath.Join(dir, "xdpcap-bench.pcap")
	defer os.Remove(out)
	var stderr bytes.Buffer
	c := exec.Command(t.XDPcap, "-q", "-actions", "drop", hook, out)
	c.Stderr = &stderr
	return res, captureDuring(ctx, cfg, l, c, &stderr, &res, func(s []byte) error {
		m := xdpcapSummary.FindSubmatch(s)
		if m == nil {
			return fmt.Errorf("xdpcap printed no summary: %s", s)
		}
		res.Captured, _ = strconv.ParseUint(string(m[1]), 10, 64)
		res.Lost, _ = strconv.ParseUint(string(m[4]), 10, 64)
		return nil
	})
}

// TcpdumpRate measures tcpdump capturing on the server's veth (no XDP
// program: the frames take the stack's path, which tcpdump needs).
func TcpdumpRate(ctx context.Context, cfg Config, dir string) (CaptureRate, error) {
	res := CaptureRate{Name: "tcpdump on the veth, every packet"}
	l, err := lab.New()
	if err != nil {
		return res, err
	}
	defer l.Close()
	out := filepath.Join(dir, "tcpdump-bench.pcap")
	defer os.Remove(out)
	var stderr bytes.Buffer
	c := l.Server.Command("tcpdump", "-n", "-i", l.ServerIf, "-w", out)
	c.Stderr = &stderr
	return res, captureDuring(ctx, cfg, l, c, &stderr, &res, func(s []byte) error {
		m := tcpdumpCapture.FindSubmatch(s)
		d := tcpdumpDropped.FindSubmatch(s)
		if m == nil || d == nil {
			return fmt.Errorf("tcpdump printed no statistics: %s", s)
		}
		res.Captured, _ = strconv.ParseUint(string(m[1]), 10, 64)
		res.Lost, _ = strconv.ParseUint(string(d[1]), 10, 64)
		return nil
	})
}

// captureDuring starts the capture command, floods, stops the capture with
// SIGINT and parses its statistics.
func captureDuring(ctx context.Context, cfg Config, l *lab.Lab, c *exec.Cmd, stderr *bytes.Buffer, res *CaptureRate, parse func([]byte) error) error {
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
		return fmt.Errorf("%s: %w (exit: %v)", res.Name, perr, err)
	}
	return nil
}

// DropFilterWithCapture is the 1-rule L4Drop row with xdpcap attached to
// the hook, its filter matching nothing: the difference to the plain row is
// what an idle capture costs.
func (t Tools) DropFilterWithCapture(obj, dir string) Filter {
	return Filter{Name: "L4Drop, 1 rule, xdpcap attached (filter matching nothing)", Rules: 1, Setup: func(l *lab.Lab) (func(), error) {
		_, unload, err := t.Load(l, obj)
		if err != nil {
			return nil, err
		}
		hook := filepath.Join("/sys/fs/bpf/l4drop", l.ServerIf+"@"+l.Server.Name, "xdpcap_hook")
		out := filepath.Join(dir, "xdpcap-idle.pcap")
		var stderr bytes.Buffer
		c := exec.Command(t.XDPcap, "-q", hook, out, "tcp port 1")
		c.Stderr = &stderr
		if err := c.Start(); err != nil {
			unload()
			return nil, err
		}
		time.Sleep(time.Second)
		if c.ProcessState != nil {
			unload()
			return nil, fmt.Errorf("xdpcap exited: %s", stderr.String())
		}
		return func() {
			c.Process.Signal(os.Interrupt)
			c.Wait()
			os.Remove(out)
			unload()
		}, nil
	}}
}
