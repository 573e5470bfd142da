// Package demo runs L4Drop's demo (l4lab demo): a lab, a DNS and SYN flood,
// rules built with bpfgen and loaded with l4drop, xdpcap on the dropped
// packets, then the daemon's auto mitigation of an attack no rule knows,
// each step shown as an operator would type it, with checked claims.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4drop/l4drop/lab"
)

// Options say how the demo runs.
type Options struct {
	// Short runs a quick version, for CI, whose failed claims fail Run.
	Short bool
	// Bins holds the paths of the commands the demo runs: l4drop, xdpcap,
	// bpfgen and tcpdump.
	Bins map[string]string
	// Bold marks the step titles bold, for a terminal.
	Bold bool
}

// Run runs the demo in a lab of its own, writing its story to w, and
// removes the lab. It returns lab.ErrInterrupted on Ctrl-C, and with
// o.Short an error listing the claims that failed.
func Run(w io.Writer, o Options) error {
	d := &demo{w: w, short: o.Short, bins: o.Bins, boldOn: o.Bold}
	d.times = demoTimes{legitOnly: 3 * time.Second, flood: 5 * time.Second, mitigated: 8 * time.Second,
		legitRate: 10000, floodRate: 1e6}
	if d.short {
		d.times = demoTimes{legitOnly: time.Second, flood: 2 * time.Second, mitigated: 3 * time.Second,
			legitRate: 5000, floodRate: 300000}
	}
	for _, name := range Commands {
		if d.bins[name] == "" {
			return fmt.Errorf("demo: no path for %s", name)
		}
	}
	dir, err := os.MkdirTemp("", "l4lab-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d.dir = dir
	if err := lab.Run(context.Background(), d.run); err != nil {
		return err
	}
	if len(d.failed) > 0 {
		return fmt.Errorf("%d claim(s) failed: %s", len(d.failed), strings.Join(d.failed, "; "))
	}
	return nil
}

// Commands are the commands the demo runs, which Options.Bins must hold.
var Commands = []string{"l4drop", "xdpcap", "bpfgen", "tcpdump"}

// demoTimes are the demo's phase lengths and rates.
type demoTimes struct {
	legitOnly, flood, mitigated time.Duration
	legitRate, floodRate        float64
}

const (
	legitName  = "www.example.org"
	attackZone = "attack.example"
	synExpr    = "tcp[tcpflags] & tcp-syn != 0 and dst port 80"
)

type demo struct {
	w      io.Writer
	short  bool
	times  demoTimes
	bins   map[string]string
	dir    string
	l      *lab.Lab
	sink   *lab.DNSSink
	legit  *lab.Generator
	failed []string
	boldOn bool
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.w, format+"\n", args...) }

func (d *demo) step(n int, title string) {
	d.say("\n%s", d.bold(fmt.Sprintf("[%d/8] %s", n, title)))
}

// bold marks s bold on a terminal.
func (d *demo) bold(s string) string {
	if d.boldOn {
		return "\033[1m" + s + "\033[0m"
	}
	return s
}

// claim records a checked statement; in -short mode a false one fails the run.
func (d *demo) claim(ok bool, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if ok {
		d.say("  ✔ %s", msg)
		return
	}
	d.say("  ✘ %s", msg)
	if d.short {
		d.failed = append(d.failed, msg)
	}
}

// cmd runs a command as an operator would type it, showing it and its output.
func (d *demo) cmd(name string, args ...string) (string, error) {
	shown := append([]string{name}, args...)
	for i, a := range shown {
		if strings.ContainsAny(a, " *&[]'\"") {
			shown[i] = "'" + a + "'"
		}
		shown[i] = strings.ReplaceAll(shown[i], d.dir+"/", "")
	}
	d.say("  $ %s", strings.Join(shown, " "))
	c := exec.Command(d.bins[name], args...)
	c.Dir = d.dir
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	for _, out := range []string{stdout.String(), stderr.String()} {
		for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			if line != "" {
				if len(line) > 150 {
					line = line[:147] + "..."
				}
				d.say("    %s", line)
			}
		}
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(shown, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (d *demo) nsFlags() []string {
	return []string{"--iface", d.l.ServerIf, "--netns", d.l.Server.Name}
}

func (d *demo) run(ctx context.Context, l *lab.Lab) (err error) {
	d.l = l
	d.step(1, "The lab")
	d.say("  namespaces %s (the internet) and %s (the server),", l.Inet.Name, l.Server.Name)
	d.say("  joined by a veth pair: %s %s  <->  %s %s", l.InetIf, lab.InetIPv4, l.ServerIf, lab.ServerIPv4)
	d.say("  The server runs a DNS service on port 53 and a web service on port 80.")
	if d.sink, err = l.ListenDNS(53, legitName); err != nil {
		return err
	}
	defer d.sink.Close()
	web, err := d.listenTCP(80)
	if err != nil {
		return err
	}
	defer web.Close()

	// Legitimate traffic runs in the background for the whole demo.
	legitT, err := lab.ParseTemplate("dns,name=" + legitName)
	if err != nil {
		return err
	}
	legit, err := lab.NewGenerator(l.Inet, l.InetIf, []lab.Template{legitT}, 2)
	if err != nil {
		return err
	}
	defer legit.Close()
	d.legit = legit
	lctx, stopLegit := context.WithCancel(ctx)
	var lwg sync.WaitGroup
	lwg.Add(1)
	var legitErr error
	go func() {
		defer lwg.Done()
		_, legitErr = legit.Run(lctx, lab.RunOptions{Rate: d.times.legitRate, CPU: 1})
		if errors.Is(legitErr, context.Canceled) {
			legitErr = nil
		}
	}()
	defer func() {
		stopLegit()
		lwg.Wait()
		err = errors.Join(err, legitErr)
	}()

	d.step(2, "Legitimate traffic only")
	d.say("  %s sends %.0f DNS queries a second for %s.", lab.InetIPv4, d.times.legitRate, legitName)
	base := d.watch(ctx, d.times.legitOnly, nil, nil)
	d.claim(base.udpIn >= base.legitSent*d.legitShare()/100 && base.legitSent > 0,
		"%d of the %d legitimate queries sent reached the server's DNS socket layer; the DNS service answered %d",
		base.udpIn, base.legitSent, base.legitGot)

	attack := []string{"dns,name=*." + attackZone + ",weight=70", "syn,port=80,randsrc,weight=30"}
	var ts []lab.Template
	for _, s := range attack {
		t, err := lab.ParseTemplate(s)
		if err != nil {
			return err
		}
		ts = append(ts, t)
	}
	flood, err := lab.NewGenerator(l.Inet, l.InetIf, ts, 3)
	if err != nil {
		return err
	}
	defer flood.Close()

	d.step(3, "The attack")
	d.say("  Now also %.0f packets a second: 70%% DNS queries for random names under %s", d.times.floodRate, attackZone)
	d.say("  (a random-subdomain flood), 30%% TCP SYNs to port 80 from random sources.")
	hurt := d.watch(ctx, d.times.flood, flood, nil)
	d.say("  The server's stack handled %.0f kpps of attack, and legitimate queries got lost:", hurt.stackPPS/1e3)
	d.say("  %d of %d answered (%.0f%%).", hurt.legitGot, hurt.legitSent, pct(hurt.legitGot, hurt.legitSent))
	if ctx.Err() != nil {
		return nil
	}

	d.step(4, "Rules")
	d.say("  bpfgen turns the attacked names into cBPF; a tcpdump expression catches the SYNs.")
	out, err := d.cmd("bpfgen", "dns", "--", "*."+attackZone)
	if err != nil {
		return err
	}
	bytecode := strings.TrimSpace(out)
	rules := fmt.Sprintf(`sample_rate: 100
rules:
  - name: dns-random-%s
    bpf: %q
  - name: syn-flood-80
    expr: %q
`, strings.ReplaceAll(attackZone, ".", "-"), bytecode, synExpr)
	if err := os.WriteFile(filepath.Join(d.dir, "rules.yaml"), []byte(rules), 0o644); err != nil {
		return err
	}
	d.say("  rules.yaml:")
	for _, line := range strings.Split(strings.TrimSpace(rules), "\n") {
		if len(line) > 100 {
			line = line[:97] + "..."
		}
		d.say("    %s", line)
	}
	if _, err := d.cmd("l4drop", "build", "rules.yaml", "-o", "rules.o"); err != nil {
		return err
	}

	d.step(5, "Mitigation")
	loadArgs := append([]string{"load", "rules.o"}, d.nsFlags()...)
	if _, err := d.cmd("l4drop", loadArgs...); err != nil {
		return err
	}
	defer func() {
		uerr := exec.Command(d.bins["l4drop"], append([]string{"unload"}, d.nsFlags()...)...).Run()
		if uerr != nil {
			err = errors.Join(err, fmt.Errorf("l4drop unload: %w", uerr))
		}
	}()
	hook := filepath.Join("/sys/fs/bpf/l4drop", l.ServerIf+"@"+l.Server.Name, "xdpcap_hook")
	capFile := filepath.Join(d.dir, "drops.pcapng")
	sampleFile := filepath.Join(d.dir, "samples.pcapng")
	bg := []*exec.Cmd{
		exec.Command(d.bins["xdpcap"], "-q", "-c", "10", "-actions", "drop", "-format", "pcapng", hook, capFile),
		exec.Command(d.bins["l4drop"], append([]string{"samples", "-w", sampleFile, "--count", "5"}, d.nsFlags()...)...),
	}
	var bgOut [2]bytes.Buffer
	for i, c := range bg {
		c.Stdout, c.Stderr = &bgOut[i], &bgOut[i]
		if err := c.Start(); err != nil {
			return err
		}
	}
	defer func() {
		for _, c := range bg {
			if c.ProcessState == nil {
				c.Process.Signal(os.Interrupt)
				c.Wait()
			}
		}
	}()
	d.say("  The same flood again, with L4Drop on %s; per-rule counters from 'l4drop status':", l.ServerIf)
	saved := d.watch(ctx, d.times.mitigated, flood, d.status)
	if ctx.Err() != nil {
		return nil
	}
	st, err := d.status()
	if err != nil {
		return err
	}
	var dropped uint64
	for _, r := range st.Rules {
		dropped += r.Packets
	}
	// Frames the veth could not queue (a receive ring overflowing, as on a
	// real NIC) never reach L4Drop; count what reached the interface.
	arrived := saved.rx - min(saved.rx, saved.udpIn)
	d.claim(dropped >= arrived*99/100 && arrived > 0,
		"L4Drop dropped %d of the %d attack packets that reached %s (%d sent)", dropped, arrived, l.ServerIf, saved.floodSent)
	d.claim(saved.udpIn >= saved.legitSent*d.legitShare()/100 && saved.legitSent > 0,
		"%d of the %d legitimate queries sent reached the server's DNS socket layer (%.1f%%)", min(saved.udpIn, saved.legitSent), saved.legitSent, pct(saved.udpIn, saved.legitSent))
	other := saved.stackPkts - min(saved.stackPkts, saved.udpIn)
	d.claim(other <= arrived/100,
		"the attack did not reach the stack: %d other packets did, %.2f%% of the attack", other, pct(other, arrived))
	d.say("  The DNS service answered %d of them (%.1f%%).", saved.legitGot, pct(saved.legitGot, saved.legitSent))

	d.step(6, "xdpcap: what L4Drop dropped")
	d.say("  xdpcap ran on L4Drop's hook during the flood:")
	d.say("  $ xdpcap -c 10 -actions drop -format pcapng %s drops.pcapng", hook)
	waitBG(bg[0], 5*time.Second)
	out, _ = d.cmd("tcpdump", "-nr", "drops.pcapng")
	n := countLines(out, " IP ")
	d.claim(n >= 10, "xdpcap captured %d dropped packets", n)

	d.step(7, "Samples")
	d.say("  L4Drop samples 1 packet in 100, dropped or not, for analysis:")
	d.say("  $ l4drop samples --iface %s --netns %s -w samples.pcapng --count 5", l.ServerIf, l.Server.Name)
	waitBG(bg[1], 5*time.Second)
	d.cmd("tcpdump", "-nr", "samples.pcapng")

	if err := d.autoPhase(ctx); err != nil {
		return err
	}

	d.say("\n%s Removing L4Drop, the namespaces and the veth pair.", d.bold("Done."))
	return nil
}

func waitBG(c *exec.Cmd, timeout time.Duration) {
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		c.Process.Signal(os.Interrupt)
		<-done
	}
}

func countLines(s, sub string) int {
	n := 0
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

// pct returns the share, in percent, of whole that part is. The two come
// from different counters (the kernel's UDP counters count every datagram
// delivered, the sender's only its own; they are read at slightly different
// moments), so part can exceed whole by a few packets: a share is never
// above 100 %, so part is taken as at most whole.
func pct(part, whole uint64) float64 {
	if whole == 0 {
		return 0
	}
	return 100 * float64(min(part, whole)) / float64(whole)
}

// listenTCP opens a TCP listener on the server that accepts and closes.
func (d *demo) listenTCP(port int) (net.Listener, error) {
	var ln net.Listener
	err := d.l.Server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln, nil
}

type statusJSON struct {
	Rules []struct {
		Name    string `json:"name"`
		Enabled bool   `json:"enabled"`
		Packets uint64 `json:"packets"`
		Bytes   uint64 `json:"bytes"`
	} `json:"rules"`
	AutoRules []struct {
		Name    string    `json:"name"`
		Since   time.Time `json:"since"`
		Expr    string    `json:"expr"`
		Packets uint64    `json:"packets"`
	} `json:"auto_rules"`
	Samples uint64 `json:"samples"`
	Lost    uint64 `json:"lost"`
}

func (d *demo) status() (statusJSON, error) {
	var st statusJSON
	out, err := exec.Command(d.bins["l4drop"], append([]string{"status", "--json", "--interval", "0"}, d.nsFlags()...)...).Output()
	if err != nil {
		return st, fmt.Errorf("l4drop status: %w", err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("l4drop status --json: %w", err)
	}
	return st, nil
}

// phase is what one watched phase saw.
type phase struct {
	floodSent, legitSent, legitGot, stackPkts, rx uint64
	udpIn                                         uint64 // UDP datagrams that reached sockets, or were lost at a full one
	stackPPS                                      float64
}

// watch runs flood (if any) for dur and prints a line a second: attack
// sent, what reached the server's stack, legitimate queries answered, and
// the rules' counters if status is given.
// legitShare is the percentage of legitimate queries that must reach the
// server. Live frames arrive whole; where the kernel refuses them (see
// lab.Generator.PacketSocket) the frames cross the sender's backlog, which
// drops a few under the parallel load of a test run (97.5% seen).
func (d *demo) legitShare() uint64 {
	if d.legit.PacketSocket() {
		return 95
	}
	return 98
}

func (d *demo) watch(ctx context.Context, dur time.Duration, flood *lab.Generator, status func() (statusJSON, error)) phase {
	var p phase
	// Sent before counted at the start, counted before sent at the end: a
	// legitimate packet in flight is counted as sent, never as only received.
	ls0, _ := d.legit.Sent()
	c0, _ := d.l.ServerCounters()
	lg0, _ := d.sink.Counts()
	var floodSent atomic.Uint64
	var floodDone atomic.Bool
	var wg sync.WaitGroup
	fctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	if flood != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := flood.Run(fctx, lab.RunOptions{Duration: dur, Rate: d.times.floodRate, CPU: min(2, runtime.NumCPU()),
				// Small batches give the receiving veth's NAPI a turn more often,
				// so fewer frames overflow its ring.
				BatchSize: 64})
			if err != nil {
				d.say("  generator: %v", err)
			}
			floodSent.Store(r.Sent)
			floodDone.Store(true)
		}()
	}
	start := time.Now()
	lastLine := start
	prevC, prevLg, prevLs, prevF := c0, lg0, ls0, uint64(0)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-fctx.Done():
			done = true
		case <-tick.C:
		}
		c, _ := d.l.ServerCounters()
		lg, _ := d.sink.Counts()
		ls, _ := d.legit.Sent()
		f := floodSent.Load()
		if flood != nil && !floodDone.Load() {
			f, _ = flood.Sent()
		}
		line := fmt.Sprintf("  %4.1fs", time.Since(start).Seconds())
		if flood != nil {
			line += fmt.Sprintf("  attack sent %7d", f-prevF)
		}
		line += fmt.Sprintf("  reached the stack %7d", c.Sub(prevC).IPIn)
		line += fmt.Sprintf("  legitimate answered %5d/%-5d", lg-prevLg, ls-prevLs)
		if status != nil {
			if st, err := status(); err == nil {
				for _, r := range st.Rules {
					line += fmt.Sprintf("  %s %d", r.Name, r.Packets)
				}
				for _, r := range st.AutoRules {
					line += fmt.Sprintf("  %s %d", r.Name, r.Packets)
				}
			}
		}
		if time.Since(lastLine) > 500*time.Millisecond {
			d.say("%s", line)
			lastLine = time.Now()
		}
		prevC, prevLg, prevLs, prevF = c, lg, ls, f
	}
	wg.Wait()
	// Let the last packets through the stack, and the legitimate generator
	// report what it sent up to now.
	time.Sleep(200 * time.Millisecond)
	c, _ := d.l.ServerCounters()
	lg, _ := d.sink.Counts()
	p.floodSent = floodSent.Load()
	p.legitGot = lg - lg0
	ls, _ := d.legit.Sent()
	p.legitSent = ls - ls0
	p.stackPkts = c.Sub(c0).IPIn
	p.rx = c.Sub(c0).RxPackets
	p.udpIn = c.Sub(c0).UDPIn + c.Sub(c0).UDPRcvbufErrors
	p.stackPPS = float64(p.stackPkts) / dur.Seconds()
	return p
}
