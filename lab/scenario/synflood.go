package scenario

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/l4drop/l4drop/lab"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/l4drop/l4drop/l4drop"
)

// SynFloodOptions configure SynFlood.
type SynFloodOptions struct {
	// Rules is a built L4Drop rule set (an ELF), loaded on the server's
	// interface for the run, with the loader's host setup; nil runs the
	// kernel alone (its own SYN cookies, net.ipv4.tcp_syncookies=1).
	Rules []byte
	// Clients is how many real clients connect, send a line and read it
	// back; Parallel how many do so at once (default 50).
	Clients, Parallel int
	// Port is the server's TCP port (default 80).
	Port int
	// FloodRate is the spoofed SYN flood's rate in packets a second, 0 the
	// generator's full speed; NoFlood runs the clients alone.
	FloodRate float64
	NoFlood   bool
	// Timeout bounds each client's connect and exchange (default 10 s).
	Timeout time.Duration
}

// SynFloodResult is what a SynFlood run measured.
type SynFloodResult struct {
	Clients, Completed int
	// Errors counts the failed clients by their error, up to 10 kinds.
	Errors map[string]int
	// Connect time percentiles over all clients; a client that failed
	// counts as slower than any (its percentile is then Timeout).
	ConnectP50, ConnectP99, ConnectMax time.Duration
	// FloodSent and FloodPPS are what the generator sent during the
	// clients' run; PacketSocket reports the generator's fallback (no live
	// frames on this kernel), about ten times slower.
	FloodSent    uint64
	FloodPPS     float64
	PacketSocket bool
	// Actions are the rule set's action counters after the run (nil for
	// the kernel alone).
	Actions map[string]uint64
	// Server and Inet are the TCP counters of the server's and the
	// internet side's namespace that tell where clients were lost
	// (/proc/net/netstat's TcpExt and /proc/net/snmp's Tcp: SyncookiesRecv,
	// SyncookiesFailed, ListenOverflows, ListenDrops, RetransSegs...),
	// grown during the run.
	Server, Inet map[string]uint64
}

// CompletedShare is the share of clients that completed, 0 to 1.
func (r SynFloodResult) CompletedShare() float64 {
	if r.Clients == 0 {
		return 0
	}
	return float64(r.Completed) / float64(r.Clients)
}

// SynFloodTemplate is the flood: SYNs as Linux sends them (MSS, SACK,
// timestamps, window scale) from random sources, source ports, sequence
// numbers and timestamps.
func SynFloodTemplate(port int) string {
	return fmt.Sprintf("syn,port=%d,randsrc,tcpopts=linux,ipid=rand", port)
}

// SynFlood floods the lab's server with spoofed SYNs while real clients
// (the kernel's TCP stack, Go's net.Dial, in the internet namespace)
// connect to an echo server on the server side, send a line and read it
// back. It leaves the lab as it found it (the rule set unloaded).
func SynFlood(ctx context.Context, l *lab.Lab, opts SynFloodOptions) (SynFloodResult, error) {
	if opts.Parallel <= 0 {
		opts.Parallel = 50
	}
	if opts.Port == 0 {
		opts.Port = 80
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	res := SynFloodResult{Clients: opts.Clients, Errors: map[string]int{}}
	if opts.Clients <= 0 {
		return res, errors.New("synflood: no clients")
	}

	// SYN-ACKs sent with XDP_TX into the veth reach the internet side only
	// if it runs NAPI: an XDP program that passes everything.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		return res, fmt.Errorf("synflood: %w", err)
	}
	defer pass.Close()
	var inetLink link.Link
	if err := l.Inet.Do(func() error {
		var err error
		inetLink, err = link.AttachXDP(link.XDPOptions{Program: pass, Interface: l.InetIndex})
		return err
	}); err != nil {
		return res, fmt.Errorf("synflood: XDP on %s: %w", l.InetIf, err)
	}
	defer inetLink.Close()

	var h *l4drop.Handle
	if opts.Rules != nil {
		root, err := l.PinDir()
		if err != nil {
			return res, err
		}
		ld, err := l4drop.Load(opts.Rules, l4drop.LoadOptions{Iface: l.ServerIf, Netns: l.Server.Name, Root: root})
		if err != nil {
			return res, fmt.Errorf("synflood: load: %w", err)
		}
		ld.Close()
		defer l4drop.Unload(ld.Dir)
		if h, err = l4drop.Open(ld.Dir); err != nil {
			return res, err
		}
		defer h.Close()
	}

	server0, err := tcpStats(l.Server.Do)
	if err != nil {
		return res, err
	}
	inet0, err := tcpStats(l.Inet.Do)
	if err != nil {
		return res, err
	}
	stopServer, err := echoServer(l, opts.Port, opts.Timeout)
	if err != nil {
		return res, err
	}
	defer stopServer()

	floodCtx, stopFlood := context.WithCancel(ctx)
	defer stopFlood()
	floodDone := make(chan error, 1)
	var flood lab.Result
	if opts.NoFlood {
		floodDone <- nil
	} else {
		t, err := lab.ParseTemplate(SynFloodTemplate(opts.Port))
		if err != nil {
			return res, err
		}
		g, err := lab.NewGenerator(l.Inet, l.InetIf, []lab.Template{t}, 1)
		if err != nil {
			return res, err
		}
		defer g.Close()
		go func() {
			var err error
			flood, err = g.Run(floodCtx, lab.RunOptions{Rate: opts.FloodRate, Duration: time.Hour})
			res.PacketSocket = g.PacketSocket()
			if errors.Is(err, context.Canceled) {
				err = nil
			}
			floodDone <- err
		}()
		// Let the flood fill the server's queues before the clients come.
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
	}

	times := make([]time.Duration, opts.Clients)
	for i := range times {
		times[i] = -1 // not completed
	}
	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	for range opts.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				d, err := echoClient(l, net.JoinHostPort(lab.ServerIPv4, fmt.Sprint(opts.Port)), i, opts.Timeout)
				mu.Lock()
				if err != nil {
					if msg := shortError(err); len(res.Errors) < 10 || res.Errors[msg] > 0 {
						res.Errors[msg]++
					}
				} else {
					times[i] = d
					res.Completed++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range opts.Clients {
		select {
		case work <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	stopFlood()
	if err := <-floodDone; err != nil {
		return res, fmt.Errorf("synflood: flood: %w", err)
	}
	res.FloodSent, res.FloodPPS = flood.Sent, flood.PPS
	for i, d := range times {
		if d < 0 {
			times[i] = opts.Timeout
		}
	}
	slices.Sort(times)
	pct := func(p float64) time.Duration { return times[min(int(p*float64(len(times))), len(times)-1)] }
	res.ConnectP50, res.ConnectP99, res.ConnectMax = pct(0.50), pct(0.99), times[len(times)-1]
	for _, side := range []struct {
		do     func(func() error) error
		before map[string]uint64
		dst    *map[string]uint64
	}{{l.Server.Do, server0, &res.Server}, {l.Inet.Do, inet0, &res.Inet}} {
		after, err := tcpStats(side.do)
		if err != nil {
			return res, err
		}
		*side.dst = map[string]uint64{}
		for k, v := range after {
			if d := v - side.before[k]; d > 0 {
				(*side.dst)[k] = d
			}
		}
	}
	if h != nil {
		st, err := h.Status(0)
		if err != nil {
			return res, err
		}
		res.Actions = st.Actions
	}
	return res, ctx.Err()
}

// echoServer accepts connections on port in the server namespace and
// echoes one line each; stop closes it and waits for its connections.
func echoServer(l *lab.Lab, port int, timeout time.Duration) (stop func(), err error) {
	var ln net.Listener
	if err := l.Server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		return err
	}); err != nil {
		return nil, fmt.Errorf("synflood: server: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(timeout))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return func() { ln.Close(); wg.Wait() }, nil
}

// echoClient connects from the internet namespace, sends a line and reads
// it back; it returns how long the connect took.
func echoClient(l *lab.Lab, addr string, i int, timeout time.Duration) (time.Duration, error) {
	var c net.Conn
	var took time.Duration
	err := l.Inet.Do(func() error {
		start := time.Now()
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		took = time.Since(start)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	msg := fmt.Sprintf("client %d from %s\n", i, c.LocalAddr())
	if _, err := c.Write([]byte(msg)); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("read back: %w", err)
	}
	if got != msg {
		return 0, errors.New("read back something else")
	}
	return took, nil
}

// shortError is err without the addresses a net.OpError names, so that
// clients failing alike count as one kind.
func shortError(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Op + ": " + oe.Err.Error()
	}
	return err.Error()
}

// tcpCounters are the counters tcpStats reads.
var tcpCounters = []string{"SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed", "ListenOverflows", "ListenDrops",
	"TCPReqQFullDrop", "TCPReqQFullDoCookies", "RetransSegs", "InErrs", "OutRsts", "AttemptFails", "TCPTimeouts", "TCPBacklogDrop"}

// tcpStats reads tcpCounters of the namespace do runs in. /proc/net
// follows the process's first thread; /proc/thread-self/net the caller's.
func tcpStats(do func(func() error) error) (map[string]uint64, error) {
	out := map[string]uint64{}
	err := do(func() error {
		for _, f := range []string{"/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			lines := strings.Split(string(b), "\n")
			for i := 0; i+1 < len(lines); i += 2 {
				names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				if len(names) != len(values) || len(names) == 0 || (names[0] != "TcpExt:" && names[0] != "Tcp:") {
					continue
				}
				for j := 1; j < len(names); j++ {
					if slices.Contains(tcpCounters, names[j]) {
						v, _ := strconv.ParseUint(values[j], 10, 64)
						out[names[j]] = v
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("synflood: TCP counters: %w", err)
	}
	return out, nil
}
