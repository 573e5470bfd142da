// Package lab builds a self-contained network lab and floods it.
//
// A Lab is two network namespaces, the "internet" side and the "server"
// side, joined by a veth pair with fixed addresses and static neighbours.
// A Generator pushes templated traffic (DNS queries for random names, TCP
// SYNs, UDP; IPv4 or IPv6, VLAN-tagged or not, mixed by ratio) from the
// internet side into the veth with BPF_PROG_TEST_RUN in live-frames mode, the
// fastest path this kernel offers. Counters on the server side tell what
// reached the server's network stack.
//
// The lab touches only what it created: its namespaces carry a unique name
// with the prefix "l4lab-", and a marker file under /run/l4lab records which
// process made them, so Clean can remove what a killed process left behind
// without ever removing something else.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/internal/bpffs"
	"github.com/l4drop/l4drop/internal/l4pins"
	"github.com/l4drop/l4drop/internal/netns"
)

// Addresses of the lab's two ends, from the benchmarking range (RFC 2544) and
// a unique-local IPv6 prefix: nothing outside the lab answers to them.
const (
	InetIPv4   = "198.18.0.1"
	ServerIPv4 = "198.18.0.2"
	InetIPv6   = "fd00:198:18::1"
	ServerIPv6 = "fd00:198:18::2"
)

// MAC addresses of the lab's two ends.
var (
	InetMAC   = net.HardwareAddr{0x02, 0x00, 0xc6, 0x12, 0x00, 0x01}
	ServerMAC = net.HardwareAddr{0x02, 0x00, 0xc6, 0x12, 0x00, 0x02}
)

// Prefix starts the name of every namespace the lab creates.
const Prefix = "l4lab-"

// MarkerDir holds one marker file per live lab.
const MarkerDir = "/run/l4lab"

// ErrNotOurs is returned when asked to remove something the lab did not create.
var ErrNotOurs = errors.New("not created by l4lab")

// Lab is a pair of namespaces joined by a veth pair.
type Lab struct {
	// ID is unique among the labs on this machine; names derive from it.
	ID string
	// Inet is the internet side, where traffic comes from; Server receives it.
	Inet, Server *netns.NS
	// InetIf and ServerIf are the veth ends' names inside each namespace. They
	// are unique on the machine so that pins named after them do not collide.
	InetIf, ServerIf string
	// InetIndex and ServerIndex are the ifindexes inside each namespace.
	InetIndex, ServerIndex int

	marker string
	pinDir string // made by PinDir
	closed bool
}

// marker is what a marker file holds.
type marker struct {
	PID        int       `json:"pid"`
	Namespaces []string  `json:"namespaces"`
	Created    time.Time `json:"created"`
}

var labCounter atomic.Uint32

// New creates a lab. On error nothing of it is left behind.
func New() (l *Lab, err error) {
	id := fmt.Sprintf("%d%c", os.Getpid(), 'a'+rune(labCounter.Add(1)-1)%26)
	l = &Lab{
		ID:       id,
		InetIf:   "l4i" + id,
		ServerIf: "l4s" + id,
		marker:   filepath.Join(MarkerDir, id+".json"),
	}
	inetName, serverName := Prefix+id+"-inet", Prefix+id+"-srv"
	if err := os.MkdirAll(MarkerDir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	// The marker goes first: if we die half-way, Clean knows what was ours.
	m := marker{PID: os.Getpid(), Namespaces: []string{inetName, serverName}, Created: time.Now().UTC()}
	buf, _ := json.Marshal(m)
	f, err := os.OpenFile(l.marker, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: marker: %w", err)
	}
	_, werr := f.Write(buf)
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(l.marker)
		return nil, fmt.Errorf("lab: marker: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
			l = nil
		}
	}()
	if l.Inet, err = netns.New(inetName); err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	if l.Server, err = netns.New(serverName); err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	l.InetIndex, l.ServerIndex, err = netns.NewAddressedVeth(
		netns.End{NS: l.Inet, Name: l.InetIf, MAC: InetMAC, IPv4: InetIPv4, IPv6: InetIPv6},
		netns.End{NS: l.Server, Name: l.ServerIf, MAC: ServerMAC, IPv4: ServerIPv4, IPv6: ServerIPv6})
	if err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	// The internet side answers nothing; routes back to any source the
	// generator invents point at it, so replies leave the server (costing
	// what they cost on a real server) instead of failing early.
	for _, args := range [][]string{
		{"route", "add", "default", "via", InetIPv4, "dev", l.ServerIf},
		{"-6", "route", "add", "default", "via", InetIPv6, "dev", l.ServerIf},
	} {
		if err := l.Server.IP(args...); err != nil {
			return l, fmt.Errorf("lab: %w", err)
		}
	}
	// Frames redirected into a veth are dropped unless the receiving end
	// runs NAPI, which it does with an XDP program attached or with GRO on.
	// GRO leaves the XDP slot free for whatever the lab is meant to test.
	if err := l.Server.Do(func() error { return setGRO(l.ServerIf, true) }); err != nil {
		return l, fmt.Errorf("lab: %s: enable GRO (NAPI for redirected frames): %w", l.ServerIf, err)
	}
	return l, nil
}

// PinDir returns a directory on the BPF file system for pins of the lab's
// programs and maps, /sys/fs/bpf/l4lab-ID, made on first use. Close removes
// it with everything in it, and Clean a dead lab's.
func (l *Lab) PinDir() (string, error) {
	if l.pinDir != "" {
		return l.pinDir, nil
	}
	if err := bpffs.Ensure(bpffs.DefaultRoot); err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	dir := pinDir(l.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("lab: pin directory: %w", err)
	}
	l.pinDir = dir
	return dir, nil
}

func pinDir(id string) string { return filepath.Join(bpffs.DefaultRoot, Prefix+id) }

// l4dropPins returns where l4drop pins a rule set loaded on each of the
// lab's interfaces.
func (l *Lab) l4dropPins() []string {
	var dirs []string
	for _, end := range []struct {
		iface string
		ns    *netns.NS
	}{{l.ServerIf, l.Server}, {l.InetIf, l.Inet}} {
		if end.ns != nil {
			dirs = append(dirs, l4pins.Dir("", end.iface, end.ns.Name))
		}
	}
	return dirs
}

// unloadL4Drop detaches the rule set pinned at dir, if there is one, and
// removes its pins. Unlike l4drop unload, it leaves the namespace's sysctls
// as they are: the namespace goes next.
func unloadL4Drop(dir string) error {
	if !dirExists(dir) {
		return nil
	}
	var err error
	if _, serr := os.Stat(filepath.Join(dir, l4pins.Link)); serr == nil {
		err = l4pins.Detach(dir)
	}
	if err := errors.Join(err, os.RemoveAll(dir)); err != nil {
		return fmt.Errorf("lab: unload %s: %w", dir, err)
	}
	return nil
}

// Close removes the lab's namespaces (and with them the veth pair), its pin
// directory and its marker. A rule set l4drop loaded on one of its
// interfaces is unloaded first: l4drop load and l4drop run leave it loaded,
// pinned on the host's BPF file system, which the namespaces' removal
// does not touch. It is safe to call more than once.
func (l *Lab) Close() error {
	if l == nil || l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, dir := range l.l4dropPins() {
		if err := unloadL4Drop(dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range []*netns.NS{l.Inet, l.Server} {
		if ns != nil {
			if err := ns.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if l.pinDir != "" {
		if err := os.RemoveAll(l.pinDir); err != nil {
			errs = append(errs, err)
		}
	}
	// The marker stays while anything of the lab does: once this process
	// is gone, Clean finds it and removes the rest.
	if len(errs) == 0 {
		if err := os.Remove(l.marker); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s: close: %w", l.ID, err)
	}
	return nil
}

// Clean removes labs whose creating process is gone (killed before it could
// clean up) and returns the namespaces and pin directories it removed.
// Namespaces are removed only if a marker names them and they carry the lab
// prefix.
func Clean() ([]string, error) {
	entries, err := readDirIfAny(MarkerDir)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(MarkerDir, e.Name())
		buf, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var m marker
		if err := json.Unmarshal(buf, &m); err != nil {
			errs = append(errs, fmt.Errorf("lab: clean: %s: %w", path, err))
			continue
		}
		if processAlive(m.PID) {
			continue
		}
		// The marker's name is the lab's ID: pins went under its pin
		// directory.
		if dir := pinDir(strings.TrimSuffix(e.Name(), ".json")); dirExists(dir) {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, dir)
			}
		}
		for _, name := range m.Namespaces {
			if !strings.HasPrefix(name, Prefix) {
				errs = append(errs, fmt.Errorf("lab: clean: namespace %q: %w", name, ErrNotOurs))
				continue
			}
			if !netns.Exists(name) {
				continue
			}
			if err := netns.Delete(name); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, name)
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	stale, err := cleanL4DropPins()
	removed = append(removed, stale...)
	return removed, errors.Join(append(errs, err)...)
}

// cleanL4DropPins removes l4drop's pins of rule sets loaded on the
// interfaces of labs whose namespace is gone, and returns their
// directories. Their interfaces went with the namespace: nothing is
// attached any more, the pins only hold the programs and maps.
func cleanL4DropPins() ([]string, error) {
	root := l4pins.Root("")
	entries, err := readDirIfAny(root)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		iface, ns, ok := strings.Cut(e.Name(), "@")
		if !ok || !strings.HasPrefix(ns, Prefix) || !strings.HasPrefix(iface, "l4") || netns.Exists(ns) {
			continue
		}
		dir := filepath.Join(root, e.Name())
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: clean: %w", err))
			continue
		}
		removed = append(removed, dir)
	}
	return removed, errors.Join(errs...)
}

// readDirIfAny returns dir's entries, none if there is no dir.
func readDirIfAny(dir string) ([]os.DirEntry, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab: clean: %w", err)
	}
	return entries, nil
}

func dirExists(dir string) bool {
	st, err := os.Stat(dir)
	return err == nil && st.IsDir()
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd, data uint32
}

// ifreqPtr is struct ifreq with its union holding a pointer.
type ifreqPtr struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}

const ethtoolSGRO = 0x2c // ETHTOOL_SGRO

// setGRO switches GRO on ifname in the calling thread's namespace, through
// the ethtool ioctl (no ethtool binary needed).
func setGRO(ifname string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	v := ethtoolValue{cmd: ethtoolSGRO}
	if on {
		v.data = 1
	}
	var ifr ifreqPtr
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&v)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("ioctl SIOCETHTOOL: %w", errno)
	}
	return nil
}

// ifaceStats reads an interface's counters from /proc/net/dev of the
// calling thread's namespace.
func ifaceStats(ifname string) (rxPackets, rxDropped, txPackets, txDropped uint64, err error) {
	buf, err := os.ReadFile("/proc/thread-self/net/dev")
	if err != nil {
		return 0, 0, 0, 0, err
	}
	for _, line := range strings.Split(string(buf), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != ifname {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			break
		}
		n := func(i int) uint64 { v, _ := strconv.ParseUint(f[i], 10, 64); return v }
		return n(1), n(3), n(9), n(11), nil
	}
	return 0, 0, 0, 0, fmt.Errorf("interface %s not in /proc/net/dev", ifname)
}

// AttachServer attaches prog in native mode to the server side's end of the
// veth pair, where filters under test sit; closing the link detaches it.
func (l *Lab) AttachServer(prog *ebpf.Program) (link.Link, error) {
	var lk link.Link
	err := l.Server.Do(func() error {
		var err error
		lk, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: l.ServerIndex})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: attach to %s: %w", l.ServerIf, err)
	}
	return lk, nil
}
