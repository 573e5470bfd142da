package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

// DaemonCost is what `l4drop run` with a component (sFlow export, auto
// mitigation) cost while a flood went through its program.
type DaemonCost struct {
	// Name says what ran; Args are the components' flags.
	Name string
	Args []string
	// Packets went through the loaded program at PPS for Elapsed.
	Packets    uint64
	PPS        float64
	SampleRate int
	Elapsed    time.Duration
	// Samples the program wrote and lost (its perf buffers were full).
	Samples, SamplesLost uint64
	// Exported are the flow samples the collector received, in Datagrams
	// (sFlow only).
	Exported, Datagrams uint64
	// SinkDropped are samples the daemon's components dropped because they
	// could not keep up, and DatagramsLost datagrams the sFlow exporter
	// failed to send (the daemon's metrics).
	SinkDropped, DatagramsLost uint64
	// AutoRules are the auto rules deployed when the flood ended.
	AutoRules int
	// CPU is the daemon process's CPU time over Elapsed.
	CPU time.Duration
}

// CoreShare is the daemon's CPU time as a share of one core.
func (c DaemonCost) CoreShare() float64 {
	if c.Elapsed <= 0 {
		return 0
	}
	return c.CPU.Seconds() / c.Elapsed.Seconds()
}

// Lost is every sample that went missing: in the program, in the daemon
// and, with an sFlow collector, on the way to it.
func (c DaemonCost) Lost() uint64 {
	lost := c.SamplesLost + c.SinkDropped
	if c.Datagrams > 0 && c.Samples > c.Exported+lost {
		lost = c.Samples - c.Exported
	}
	return lost
}

// DaemonLoad says how MeasureDaemon floods the daemon's program.
type DaemonLoad struct {
	PPS, SampleRate int
	Duration        time.Duration
}

// Components whose cost MeasureDaemon measures.
const (
	DaemonSFlow = "sflow"
	DaemonAuto  = "auto"
)

// MeasureDaemon runs `l4drop run` with a component (DaemonSFlow: export
// to a collector here that counts flow samples; DaemonAuto: --auto with
// a rule set that does not match the flood, so that the daemon has to
// find it) on a lab's server interface, and puts load.PPS packets a second
// of the bench's attack traffic through the loaded program for
// load.Duration, by BPF_PROG_TEST_RUN from one CPU: the program samples and
// counts as for packets from the wire, and test runs reach rates the veth
// generator does not reach here. It returns what the daemon lost and spent.
func MeasureDaemon(ctx context.Context, t Tools, dir, component string, load DaemonLoad, logf func(string, ...any)) (DaemonCost, error) {
	res := DaemonCost{Name: component, SampleRate: load.SampleRate}
	if load.PPS <= 0 || load.SampleRate <= 0 || load.Duration <= 0 {
		return res, fmt.Errorf("daemon cost: pps %d, sample rate %d, duration %s: all must be > 0", load.PPS, load.SampleRate, load.Duration)
	}
	l, err := lab.New()
	if err != nil {
		return res, err
	}
	defer l.Close()

	rule := "udp dst port 53" // the flood's: the program drops it
	var col *sflowCounter
	switch component {
	case DaemonSFlow:
		if col, err = newSFlowCounter(); err != nil {
			return res, err
		}
		defer col.close()
		res.Args = []string{"--sflow", col.addr()}
	case DaemonAuto:
		rule = "udp dst port 5353" // not the flood's: the daemon must find it
		res.Args = []string{"--auto", "--auto-threshold", "20000"}
	default:
		return res, fmt.Errorf("daemon cost: unknown component %q", component)
	}
	rules := filepath.Join(dir, "daemon-"+component+".yaml")
	yml := fmt.Sprintf("sample_rate: %d\nrules:\n  - name: udp\n    expr: %q\n", load.SampleRate, rule)
	if err := os.WriteFile(rules, []byte(yml), 0o644); err != nil {
		return res, err
	}
	dp, err := startDaemon(ctx, t, l, rules, res.Args)
	if err != nil {
		return res, err
	}
	defer dp.stop()
	h, prog, cmd, metrics := dp.h, dp.prog, dp.cmd, dp.metrics

	ts, err := lab.ParseTemplate(DefaultConfig().Traffic[0])
	if err != nil {
		return res, err
	}
	frames := lab.Frames([]lab.Template{ts}, 1, 64)
	if component == DaemonAuto {
		// The engine learns what is normal before it detects (a flood
		// from the first second would be the baseline): legitimate
		// queries first, for its learning period and quarantine.
		lt, err := lab.ParseTemplate(DefaultConfig().Legit[0])
		if err != nil {
			return res, err
		}
		logf("daemon cost, %s: legitimate queries for 5 s first, the engine's learning period", component)
		if _, _, err := drive(ctx, prog, lab.Frames([]lab.Template{lt}, 2, 64), 5000, 5*time.Second); err != nil {
			return res, err
		}
	}
	samples0, lost0, err := h.SampleStats()
	if err != nil {
		return res, err
	}
	cpu0, err := processCPU(cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	logf("daemon cost, %s: %d pps through the program for %s, sample_rate %d", component, load.PPS, load.Duration, load.SampleRate)
	var ran time.Duration
	res.Packets, ran, err = drive(ctx, prog, frames, load.PPS, load.Duration)
	if err != nil {
		return res, err
	}
	if res.AutoRules, err = autoRules(h); err != nil {
		return res, err
	}
	// What the daemon still holds goes out within its flush interval (1 s);
	// the settling time is on its clock too.
	const settle = 1500 * time.Millisecond
	time.Sleep(settle)
	cpu1, err := processCPU(cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	res.Elapsed, res.CPU = ran+settle, cpu1-cpu0
	res.PPS = float64(res.Packets) / ran.Seconds()
	samples1, lost1, err := h.SampleStats()
	if err != nil {
		return res, err
	}
	res.Samples, res.SamplesLost = samples1-samples0, lost1-lost0
	if col != nil {
		res.Exported, res.Datagrams = col.counts()
	}
	m, err := scrape(metrics)
	if err != nil {
		return res, err
	}
	for k, v := range m {
		if strings.HasPrefix(k, "l4drop_sink_dropped_total{") {
			res.SinkDropped += uint64(v)
		}
	}
	res.DatagramsLost = uint64(m["l4drop_sflow_datagrams_lost_total"])
	return res, nil
}

// daemonProc is `l4drop run` on a lab's server interface, as a
// subprocess, with its pinned program and handle open.
type daemonProc struct {
	cmd     *exec.Cmd
	stderr  *strings.Builder
	metrics string
	h       *l4drop.Handle
	prog    *ebpf.Program
	stopped bool
}

// startDaemon runs `l4drop run RULES --iface --netns --metrics ARGS...` and
// returns once its metrics answer, with its program's pins open.
func startDaemon(ctx context.Context, t Tools, l *lab.Lab, rules string, args []string) (*daemonProc, error) {
	mport, err := freeTCPPort()
	if err != nil {
		return nil, err
	}
	dp := &daemonProc{stderr: &strings.Builder{}, metrics: fmt.Sprintf("127.0.0.1:%d", mport)}
	args = append([]string{"run", rules, "--iface", l.ServerIf, "--netns", l.Server.Name, "--metrics", dp.metrics}, args...)
	dp.cmd = exec.CommandContext(ctx, t.L4Drop, args...)
	dp.cmd.Stderr = dp.stderr
	if err := dp.cmd.Start(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			dp.stop()
		}
	}()
	if err := waitMetrics(ctx, dp.metrics, 30*time.Second); err != nil {
		dp.stop()
		return nil, fmt.Errorf("l4drop run: %w; stderr:\n%s", err, dp.stderr.String())
	}
	pinDir := l4drop.Dir("", l.ServerIf, l.Server.Name)
	if dp.h, err = l4drop.Open(pinDir); err != nil {
		return nil, err
	}
	if dp.prog, err = l4drop.Running(pinDir); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	ok = true
	return dp, nil
}

// stop ends the daemon (SIGTERM) and closes the pins; its log is complete
// once stop returns.
func (dp *daemonProc) stop() {
	if dp.stopped {
		return
	}
	dp.stopped = true
	dp.cmd.Process.Signal(syscall.SIGTERM)
	dp.cmd.Wait()
	if dp.prog != nil {
		dp.prog.Close()
	}
	if dp.h != nil {
		dp.h.Close()
	}
}

func autoRules(h *l4drop.Handle) (int, error) {
	if h.Auto == nil {
		return 0, nil
	}
	rs, err := h.AutoRules()
	return len(rs), err
}

// drive runs the program over frames, in test runs of pps/100 packets
// every 10 ms, for d, from one locked thread.
func drive(ctx context.Context, prog *ebpf.Program, frames [][]byte, pps int, d time.Duration) (uint64, time.Duration, error) {
	st := &stream{frames: frames, pps: pps}
	ran, err := driveStreams(ctx, prog, []*stream{st}, d, nil)
	return st.sent, ran, err
}

// stream is traffic driveStreams puts through a program: frames in turn,
// pps a second, in test runs of chunk packets (0: a tick's packets in one
// run of one frame). It counts the packets sent and those the program
// dropped.
type stream struct {
	frames        [][]byte
	pps, chunk    int
	next          int
	sent, dropped uint64
}

// xdpDrop is XDP_DROP, what a test run returns for a dropped packet.
const xdpDrop = 1

// driveStreams runs the program over the streams for d, every 10 ms each
// stream's share of packets, from one locked thread; tick, if not nil, is
// called after each 10 ms with the time.
func driveStreams(ctx context.Context, prog *ebpf.Program, streams []*stream, d time.Duration, tick func(time.Time)) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const every = 10 * time.Millisecond
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		if ctx.Err() != nil {
			return time.Since(start), ctx.Err()
		}
		for _, st := range streams {
			per := max(1, st.pps/int(time.Second/every))
			chunk := st.chunk
			if chunk <= 0 {
				chunk = per
			}
			for n := 0; n < per; n += chunk {
				k := min(chunk, per-n)
				ret, err := prog.Run(&ebpf.RunOptions{Data: st.frames[st.next%len(st.frames)], Repeat: uint32(k)})
				if err != nil {
					return time.Since(start), fmt.Errorf("daemon: test run: %w", err)
				}
				st.next++
				st.sent += uint64(k)
				if ret == xdpDrop {
					st.dropped += uint64(k)
				}
			}
		}
		if tick != nil {
			tick(time.Now())
		}
		if next := start.Add(time.Duration(i+1) * every); time.Until(next) > 0 {
			time.Sleep(time.Until(next))
		}
	}
	return time.Since(start), nil
}

// processCPU is a process's user and system CPU time, from /proc.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields count from after its ")".
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	// USER_HZ is 100 on every Linux the project runs on.
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

func freeTCPPort() (int, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitMetrics(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := scrape(addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no metrics on %s after %s: %w", addr, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrape returns the daemon's metrics by name and labels as written
// (without the iface label, which comes first), e.g.
// `l4drop_sink_dropped_total{component="sflow"`.
func scrape(addr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		key := line[:sp]
		// Drop the iface label: callers name metrics of one interface.
		if i := strings.Index(key, `{iface="`); i >= 0 {
			if j := strings.Index(key[i+8:], `"`); j >= 0 {
				rest := strings.TrimPrefix(key[i+8+j+1:], ",")
				key = key[:i]
				if rest != "}" {
					key += "{" + strings.TrimSuffix(rest, "}")
				}
			}
		}
		m[key] = v
	}
	return m, sc.Err()
}

// sflowCounter is a collector that counts datagrams and the flow samples
// in them.
type sflowCounter struct {
	conn *net.UDPConn
	done chan struct{}
	// Written by the reading goroutine, read after close.
	flows, datagrams uint64
}

func newSFlowCounter() (*sflowCounter, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	// Bursts of datagrams must not overflow the socket while the reader
	// is off CPU: a lost datagram here would be charged to the daemon.
	conn.SetReadBuffer(8 << 20)
	c := &sflowCounter{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			c.datagrams++
			c.flows += uint64(countFlowSamples(buf[:n]))
		}
	}()
	return c, nil
}

func (c *sflowCounter) addr() string { return c.conn.LocalAddr().String() }

// counts closes the collector and returns what it received.
func (c *sflowCounter) counts() (flows, datagrams uint64) {
	c.close()
	return c.flows, c.datagrams
}

func (c *sflowCounter) close() {
	c.conn.Close()
	<-c.done
}

// countFlowSamples counts the flow samples (enterprise 0, format 1 or 3)
// of an sFlow v5 datagram; a malformed datagram counts what precedes the
// damage.
func countFlowSamples(b []byte) int {
	word := func(at int) (uint32, bool) {
		if at < 0 || at+4 > len(b) {
			return 0, false
		}
		return uint32(b[at])<<24 | uint32(b[at+1])<<16 | uint32(b[at+2])<<8 | uint32(b[at+3]), true
	}
	if v, _ := word(0); v != 5 {
		return 0
	}
	at := 8 // version, address type
	switch t, _ := word(4); t {
	case 1:
		at += 4
	case 2:
		at += 16
	default:
		return 0
	}
	n, ok := word(at + 12) // sub-agent, sequence, uptime, samples
	if !ok {
		return 0
	}
	at += 16
	flows := 0
	for range n {
		typ, ok1 := word(at)
		size, ok2 := word(at + 4)
		if !ok1 || !ok2 || at+8+int(size) > len(b) {
			break
		}
		if typ == 1 || typ == 3 {
			flows++
		}
		at += 8 + int(size)
	}
	return flows
}
