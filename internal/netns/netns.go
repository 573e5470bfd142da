// Package netns creates network namespaces and veth pairs for the lab and the
// kernel tests, and runs code inside a namespace.
//
// Namespaces are named (they appear in `ip netns list`) so that operators and
// tests can reach them with `ip netns exec`. Everything here drives iproute2
// for set-up, because that is what an operator would type and its errors read
// well (but for a private namespace's loopback, which no operator sees and
// which must come up fast), and uses setns(2) on a locked OS thread to run Go
// code inside.
package netns

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrExists is returned by New when a namespace of that name exists already.
// New never adopts a namespace it did not create.
var ErrExists = errors.New("network namespace exists already")

// NS is a named network namespace created by New.
type NS struct {
	// Name is the namespace's name, as `ip netns exec NAME` takes it.
	Name  string
	fd    int
	owned bool // made by New, so Close deletes it
}

const runDir = "/run/netns"

// New creates the network namespace name with its loopback interface up.
func New(name string) (*NS, error) {
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return nil, fmt.Errorf("netns: invalid name %q", name)
	}
	if _, err := os.Stat(filepath.Join(runDir, name)); err == nil {
		return nil, fmt.Errorf("netns %s: %w", name, ErrExists)
	}
	if err := ip("netns", "add", name); err != nil {
		return nil, err
	}
	fd, err := unix.Open(filepath.Join(runDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = ip("netns", "del", name)
		return nil, fmt.Errorf("netns %s: open: %w", name, err)
	}
	ns := &NS{Name: name, fd: fd, owned: true}
	if err := ns.IP("link", "set", "lo", "up"); err != nil {
		_ = ns.Close()
		return nil, err
	}
	return ns, nil
}

// NewPrivate creates a network namespace without a name, held only by the
// returned NS: it goes when Close releases it, or when the process exits
// however it exits, so a killed process leaves nothing behind. Its loopback
// is up. Command needs a name and is not for it; IP and Do are.
func NewPrivate() (*NS, error) {
	type result struct {
		fd  int
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			c <- result{-1, fmt.Errorf("netns: open current namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			c <- result{-1, fmt.Errorf("netns: unshare: %w", err)}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			err = fmt.Errorf("netns: open new namespace: %w", err)
		} else if err = loUp(); err != nil {
			unix.Close(fd)
			fd = -1
		}
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			// The goroutine ends locked: the runtime discards the thread.
			if fd >= 0 {
				unix.Close(fd)
			}
			c <- result{-1, fmt.Errorf("netns: leave new namespace: %w", serr)}
			return
		}
		runtime.UnlockOSThread()
		c <- result{fd, err}
	}()
	r := <-c
	if r.err != nil {
		return nil, r.err
	}
	return &NS{fd: r.fd}, nil
}

// loUp sets the loopback of the calling thread's namespace up, with an
// ioctl: running `ip` costs a fork and an exec, tens of milliseconds,
// which xdpcap -r on a small file would spend most of its time on.
func loUp() error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: socket: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("netns: flags of lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("netns: set lo up: %w", err)
	}
	return nil
}

// Open returns the existing namespace name (as `ip netns add` made it), to
// run code inside it. Closing it releases the handle and never deletes it.
func Open(name string) (*NS, error) {
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return nil, fmt.Errorf("netns: invalid name %q", name)
	}
	fd, err := unix.Open(filepath.Join(runDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", name, err)
	}
	return &NS{Name: name, fd: fd}, nil
}

// Do runs fn on an OS thread that has entered the namespace. Sockets opened and
// interface indexes resolved inside fn belong to the namespace; sockets stay in
// it after Do returns.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine keeps the caller's thread out of it: if switching back
	// fails, the goroutine exits still locked and the runtime discards the
	// thread instead of reusing one stuck in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("netns %s: open current namespace: %w", ns.Name, err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netns %s: enter: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns %s: leave: %w", ns.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Command returns a command that runs name with args inside the namespace,
// as `ip netns exec` does (which also remounts /sys for it).
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// IP runs `ip ARGS...` inside the namespace.
func (ns *NS) IP(args ...string) error {
	if ns.Name == "" {
		// A child forked from a thread inside the namespace starts there.
		return ns.Do(func() error { return ip(args...) })
	}
	return ip(append([]string{"-n", ns.Name}, args...)...)
}

// Close deletes a namespace made by New: interfaces inside it go with it,
// and a veth whose peer lives elsewhere disappears on both ends. For one from
// Open it only releases the handle.
func (ns *NS) Close() error {
	if ns.fd >= 0 {
		unix.Close(ns.fd)
		ns.fd = -1
	}
	if !ns.owned {
		return nil
	}
	return ip("netns", "del", ns.Name)
}

// NewVeth creates a veth pair with aName in a and bName in b, both up.
func NewVeth(a *NS, aName string, b *NS, bName string) error {
	// Created inside a so that nothing ever appears in the caller's namespace.
	if err := a.IP("link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return err
	}
	if err := a.IP("link", "set", aName, "up"); err != nil {
		return err
	}
	return b.IP("link", "set", bName, "up")
}

// End is one end of a veth pair for NewAddressedVeth: the namespace and
// name of the interface, its MAC, and its addresses (without prefix length).
type End struct {
	NS         *NS
	Name       string
	MAC        net.HardwareAddr
	IPv4, IPv6 string
}

// NewAddressedVeth creates a veth pair between a and b, gives each end its
// MAC and addresses (IPv4 /24, IPv6 /64 without duplicate address
// detection) and a permanent neighbour entry for the other end, so that no
// ARP, neighbour discovery or DAD delays the first packets, and returns the
// ends' ifindexes inside their namespaces.
func NewAddressedVeth(a, b End) (aIndex, bIndex int, err error) {
	if err := NewVeth(a.NS, a.Name, b.NS, b.Name); err != nil {
		return 0, 0, err
	}
	var index [2]int
	for i, pair := range [2][2]End{{a, b}, {b, a}} {
		self, peer := pair[0], pair[1]
		for _, args := range [][]string{
			{"link", "set", self.Name, "address", self.MAC.String()},
			{"addr", "add", self.IPv4 + "/24", "dev", self.Name},
			{"addr", "add", self.IPv6 + "/64", "dev", self.Name, "nodad"},
			{"neigh", "replace", peer.IPv4, "lladdr", peer.MAC.String(), "dev", self.Name, "nud", "permanent"},
			{"neigh", "replace", peer.IPv6, "lladdr", peer.MAC.String(), "dev", self.Name, "nud", "permanent"},
		} {
			if err := self.NS.IP(args...); err != nil {
				return 0, 0, err
			}
		}
		err := self.NS.Do(func() error {
			ifi, err := net.InterfaceByName(self.Name)
			if err == nil {
				index[i] = ifi.Index
			}
			return err
		})
		if err != nil {
			return 0, 0, fmt.Errorf("netns %s: %w", self.NS.Name, err)
		}
	}
	return index[0], index[1], nil
}

// Delete deletes the namespace name, for clean-up of namespaces a process
// made and left behind (when it was killed, say). Callers decide that the
// namespace is theirs to delete; Delete only checks that it exists.
func Delete(name string) error {
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return fmt.Errorf("netns: invalid name %q", name)
	}
	if !Exists(name) {
		return fmt.Errorf("netns %s: %w", name, os.ErrNotExist)
	}
	return ip("netns", "del", name)
}

// Exists reports whether a namespace called name exists.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(runDir, name))
	return err == nil
}

func ip(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("ip %s: %s", strings.Join(args, " "), msg)
	}
	return nil
}
