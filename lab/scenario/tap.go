package scenario

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/lab"
)

// tap counts what reaches the server's stack: a packet socket on the
// server's end of the veth sees the frames the XDP program passed, and
// only those. Each is told apart by the templates it was made from.
type tap struct {
	fd     int
	start  time.Time
	attack *lab.Matcher
	legit  *lab.Matcher
	allow  *cbpf.Filter

	legitN atomic.Uint64
	mu     sync.Mutex
	// arrivals of attack packets, since start; allowed marks those the
	// file's pass rule matches.
	attackAt []time.Duration
	allowed  []bool
	done     chan struct{}
	stop     atomic.Bool
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openTap opens the tap on l's server interface; allow, if not nil, is the
// file's pass rule, run over the IP packet.
func openTap(l *lab.Lab, attack, legit []lab.Template, allow *cbpf.Filter) (*tap, error) {
	t := &tap{attack: lab.NewMatcher(attack), legit: lab.NewMatcher(legit), allow: allow, done: make(chan struct{})}
	err := l.Server.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		t.fd = fd
		ifi, err := net.InterfaceByName(l.ServerIf)
		if err != nil {
			return err
		}
		// The server's own replies are no traffic to judge.
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			return fmt.Errorf("PACKET_IGNORE_OUTGOING: %w", err)
		}
		// Room for the bursts before a rule lands; the count of what did
		// not fit is read at the end (lost).
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
		// Arrival times from the kernel: the reader may run late on a busy
		// machine, and a backlog read after the rule landed must not count
		// as packets that got past it.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
		}
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		if t.fd > 0 {
			unix.Close(t.fd)
		}
		return nil, fmt.Errorf("tap on %s: %w", l.ServerIf, err)
	}
	t.start = time.Now()
	go t.read()
	return t, nil
}

func (t *tap) read() {
	defer close(t.done)
	buf := make([]byte, 2048)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))
	for !t.stop.Load() {
		n, oobn, _, _, err := unix.Recvmsg(t.fd, buf, oob, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		frame := buf[:n]
		if t.attack.Match(frame, n) >= 0 {
			ok := false
			if t.allow != nil {
				if ip := lab.IPPacket(frame); ip != nil {
					ok = t.allow.Run(ip, len(ip)) != 0
				}
			}
			t.mu.Lock()
			t.attackAt = append(t.attackAt, arrival(oob[:oobn]).Sub(t.start))
			t.allowed = append(t.allowed, ok)
			t.mu.Unlock()
			continue
		}
		if t.legit.Match(frame, n) >= 0 {
			t.legitN.Add(1)
		}
	}
}

// arrival returns the kernel's receive time from a message's control data,
// or now if it has none.
func arrival(oob []byte) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
				ts := *(*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				return time.Unix(ts.Unix())
			}
		}
	}
	return time.Now()
}

// close stops the tap and returns how many frames its socket lost.
func (t *tap) close() uint64 {
	t.stop.Store(true)
	<-t.done
	var lost uint64
	if st, err := unix.GetsockoptTpacketStats(t.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		lost = uint64(st.Drops)
	}
	unix.Close(t.fd)
	return lost
}

// attackSince counts the attack packets that reached the server from d
// after the tap opened, and of those the ones the pass rule matched; last
// is when the last of the others arrived.
func (t *tap) attackSince(d time.Duration) (n, allowed uint64, last time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, at := range t.attackAt {
		if at < d {
			continue
		}
		n++
		if t.allowed[i] {
			allowed++
		} else {
			last = max(last, at)
		}
	}
	return n, allowed, last
}

// compileAllow compiles a pcap-filter expression over IP packets.
func compileAllow(expr string) (*cbpf.Filter, error) {
	prog, err := cbpf.Compile(expr, cbpf.LinkTypeRaw, 0)
	if err != nil {
		return nil, fmt.Errorf("allow rule %q: %w", expr, err)
	}
	f, err := cbpf.NewFilter(prog)
	if err != nil {
		return nil, fmt.Errorf("allow rule %q: %w", expr, err)
	}
	return f, nil
}
