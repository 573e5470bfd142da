package sflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNoAddress is returned by Link.AgentAddress for an interface without a
// usable address.
var ErrNoAddress = errors.New("sflow: interface has no IPv4 or global IPv6 address")

// Link reads an interface's counters and addresses for counter samples and
// the agent address. Its sockets belong to the network namespace of the
// thread that opened it (open it inside the interface's namespace); it may
// be used from any goroutine afterwards.
type Link struct {
	index int
	mu    sync.Mutex
	nl    int // NETLINK_ROUTE socket
	inet  int // for the ethtool ioctl
	seq   uint32
	buf   []byte
	cmd   *ethtoolCmd // on the heap: the ioctl gets its address
}

// OpenLink opens the interface of ifindex in the calling thread's network
// namespace.
func OpenLink(ifindex int) (*Link, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("sflow: ifindex %d", ifindex)
	}
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("sflow: netlink socket: %w", err)
	}
	if err := unix.Bind(nl, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(nl)
		return nil, fmt.Errorf("sflow: bind netlink socket: %w", err)
	}
	inet, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		unix.Close(nl)
		return nil, fmt.Errorf("sflow: ethtool socket: %w", err)
	}
	l := &Link{index: ifindex, nl: nl, inet: inet, buf: make([]byte, 1<<16), cmd: new(ethtoolCmd)}
	if _, _, err := l.link(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Index returns the interface's ifindex.
func (l *Link) Index() int { return l.index }

// Close closes the link's sockets.
func (l *Link) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nl >= 0 {
		unix.Close(l.nl)
		unix.Close(l.inet)
		l.nl, l.inet = -1, -1
	}
	return nil
}

// Counters returns the interface's counters as if_counters reports them.
// Linux keeps no broadcast or outgoing multicast counts: those are all
// ones, sFlow's "unknown counter"; incoming multicast is counted apart
// from unicast.
func (l *Link) Counters() (IfCounters, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	info, attrs, err := l.link()
	if err != nil {
		return IfCounters{}, err
	}
	c := IfCounters{
		Index: uint32(l.index), Type: 1, // other
		InBroadcast: ^uint32(0), OutMulticast: ^uint32(0), OutBroadcast: ^uint32(0),
		Promiscuous: 2,
	}
	switch info.Type {
	case unix.ARPHRD_ETHER:
		c.Type = 6 // ethernetCsmacd
	case unix.ARPHRD_LOOPBACK:
		c.Type = 24 // softwareLoopback
	}
	if info.Flags&unix.IFF_UP != 0 {
		c.Status |= 1
	}
	if info.Flags&unix.IFF_PROMISC != 0 {
		c.Promiscuous = 1
	}
	var name string
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFLA_OPERSTATE:
			if len(a.Value) > 0 && a.Value[0] == ifOperUp {
				c.Status |= 2
			}
		case unix.IFLA_IFNAME:
			name = cString(a.Value)
		case unix.IFLA_STATS64:
			st := func(i int) uint64 {
				if len(a.Value) < 8*(i+1) {
					return 0
				}
				return binary.NativeEndian.Uint64(a.Value[8*i:])
			}
			rxPackets, txPackets, rxBytes, txBytes := st(0), st(1), st(2), st(3)
			multicast := st(8)
			c.InOctets, c.OutOctets = rxBytes, txBytes
			c.InUcast = uint32(rxPackets - min(multicast, rxPackets))
			c.InMulticast = uint32(multicast)
			c.InErrors, c.OutErrors = uint32(st(4)), uint32(st(5))
			c.InDiscards, c.OutDiscards = uint32(st(6)), uint32(st(7))
			c.InUnknown = uint32(st(23)) // rx_nohandler
			c.OutUcast = uint32(txPackets)
		}
	}
	if name != "" {
		c.Speed, c.Direction = l.ethtool(name)
	}
	return c, nil
}

// link asks for the interface's RTM_NEWLINK message.
func (l *Link) link() (*unix.IfInfomsg, []syscall.NetlinkRouteAttr, error) {
	if l.nl < 0 {
		return nil, nil, errors.New("sflow: link closed")
	}
	req := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfInfomsg)
	l.seq++
	putNlmsghdr(req, unix.RTM_GETLINK, unix.NLM_F_REQUEST, l.seq)
	binary.NativeEndian.PutUint32(req[unix.NLMSG_HDRLEN+4:], uint32(l.index))
	msgs, err := l.roundTrip(req)
	if err != nil {
		return nil, nil, fmt.Errorf("sflow: interface %d: %w", l.index, err)
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		info := (*unix.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
		if int(info.Index) != l.index {
			continue
		}
		cp := *info
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			return nil, nil, fmt.Errorf("sflow: interface %d: %w", l.index, err)
		}
		return &cp, attrs, nil
	}
	return nil, nil, fmt.Errorf("sflow: interface %d: no link message", l.index)
}

// AgentAddress returns the interface's first IPv4 address, or without one
// its first global IPv6 address: the default sFlow agent address.
func (l *Link) AgentAddress() (netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nl < 0 {
		return netip.Addr{}, errors.New("sflow: link closed")
	}
	req := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfAddrmsg)
	l.seq++
	putNlmsghdr(req, unix.RTM_GETADDR, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, l.seq)
	msgs, err := l.roundTrip(req)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("sflow: addresses of interface %d: %w", l.index, err)
	}
	var v6 netip.Addr
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR || len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		ifa := (*unix.IfAddrmsg)(unsafe.Pointer(&m.Data[0]))
		if int(ifa.Index) != l.index {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		for _, a := range attrs {
			// IFA_LOCAL is the interface's own address on point-to-point
			// links, where IFA_ADDRESS is the peer's.
			if a.Attr.Type != unix.IFA_ADDRESS && a.Attr.Type != unix.IFA_LOCAL {
				continue
			}
			addr, ok := netip.AddrFromSlice(a.Value)
			if !ok {
				continue
			}
			if addr.Is4() {
				return addr, nil
			}
			if !v6.IsValid() && addr.IsGlobalUnicast() {
				v6 = addr
			}
		}
	}
	if v6.IsValid() {
		return v6, nil
	}
	return netip.Addr{}, fmt.Errorf("interface %d: %w", l.index, ErrNoAddress)
}

// roundTrip sends a request and collects the answer's messages (a dump's
// up to NLMSG_DONE).
func (l *Link) roundTrip(req []byte) ([]syscall.NetlinkMessage, error) {
	if err := unix.Sendto(l.nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	seq := binary.NativeEndian.Uint32(req[8:])
	dump := binary.NativeEndian.Uint16(req[6:])&unix.NLM_F_DUMP != 0
	var out []syscall.NetlinkMessage
	for {
		n, _, err := unix.Recvfrom(l.nl, l.buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(l.buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue // an answer to an earlier request that failed
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return nil, unix.Errno(-errno)
					}
				}
				return out, nil
			}
			m.Data = append([]byte(nil), m.Data...)
			out = append(out, m)
			if !dump {
				return out, nil
			}
		}
	}
}

func putNlmsghdr(b []byte, typ, flags uint16, seq uint32) {
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
}

// ethtoolCmd is struct ethtool_cmd (ETHTOOL_GSET), which every driver
// still answers.
type ethtoolCmd struct {
	Cmd           uint32
	Supported     uint32
	Advertising   uint32
	Speed         uint16
	Duplex        uint8
	Port          uint8
	PhyAddress    uint8
	Transceiver   uint8
	Autoneg       uint8
	MdioSupport   uint8
	Maxtxpkt      uint32
	Maxrxpkt      uint32
	SpeedHi       uint16
	EthTpMdix     uint8
	EthTpMdixCtrl uint8
	LpAdvertising uint32
	Reserved      [2]uint32
}

type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

const ethtoolGSet = 1

// ethtool returns the link speed in bits per second and the sFlow
// direction (1 full duplex, 2 half), 0 for what the driver does not tell.
func (l *Link) ethtool(name string) (speed uint64, direction uint32) {
	*l.cmd = ethtoolCmd{Cmd: ethtoolGSet}
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], name)
	ifr.data = uintptr(unsafe.Pointer(l.cmd))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(l.inet), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(l.cmd)
	if errno != 0 {
		return 0, 0
	}
	mbps := uint32(l.cmd.SpeedHi)<<16 | uint32(l.cmd.Speed)
	if mbps != 0 && mbps != 0xffff && mbps != 0xffffffff {
		speed = uint64(mbps) * 1_000_000
	}
	switch l.cmd.Duplex {
	case 0:
		direction = 2
	case 1:
		direction = 1
	}
	return speed, direction
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// ifOperUp is IF_OPER_UP of IFLA_OPERSTATE (RFC 2863 operational status).
const ifOperUp = 6
