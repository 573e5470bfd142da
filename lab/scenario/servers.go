package scenario

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"

	"github.com/l4drop/l4drop/lab"
)

// servers are the services the legitimate traffic is for, on the server
// side: a DNS server answering queries on 53, an echo server on other UDP
// ports, a TCP listener that accepts and closes. Reflected answers arrive
// at ports nobody listens on, as at a real victim: the stack takes them.
type servers struct {
	closers  []io.Closer
	answered atomic.Uint64
}

// destinations returns the fixed destination ports of ts, per protocol.
func destinations(ts []lab.Template) (udp, tcp []int) {
	seen := map[[2]int]bool{}
	for _, t := range ts {
		ip := lab.IPPacket(t.Frame)
		if ip == nil {
			continue
		}
		l3 := len(t.Frame) - len(ip)
		var proto, l4 int
		switch ip[0] >> 4 {
		case 4:
			proto, l4 = int(ip[9]), int(ip[0]&0xf)*4
		case 6:
			proto, l4 = int(ip[6]), 40
		default:
			continue
		}
		if len(ip) < l4+4 {
			continue
		}
		random := false
		for _, f := range t.Fields {
			if f.Off <= l3+l4+2 && f.Off+f.Len > l3+l4+2 {
				random = true
			}
		}
		port := int(ip[l4+2])<<8 | int(ip[l4+3])
		if random || seen[[2]int{proto, port}] {
			continue
		}
		seen[[2]int{proto, port}] = true
		switch proto {
		case 17:
			udp = append(udp, port)
		case 6:
			tcp = append(tcp, port)
		}
	}
	return udp, tcp
}

func startServers(l *lab.Lab, legit []lab.Template) (s *servers, err error) {
	s = &servers{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	udp, tcp := destinations(legit)
	for _, port := range udp {
		var c *net.UDPConn
		err := l.Server.Do(func() error {
			var err error
			c, err = net.ListenUDP("udp", &net.UDPAddr{Port: port})
			return err
		})
		if err != nil {
			return s, fmt.Errorf("server on UDP port %d: %w", port, err)
		}
		s.closers = append(s.closers, c)
		go s.serveUDP(c, port == 53)
	}
	for _, port := range tcp {
		var ln net.Listener
		err := l.Server.Do(func() error {
			var err error
			ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
			return err
		})
		if err != nil {
			return s, fmt.Errorf("server on TCP port %d: %w", port, err)
		}
		s.closers = append(s.closers, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.answered.Add(1)
				c.Close()
			}
		}()
	}
	return s, nil
}

// serveUDP answers every datagram: DNS queries with an empty answer
// (QR and RA set), anything else with itself.
func (s *servers) serveUDP(c *net.UDPConn, dns bool) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		if dns && n >= 12 {
			buf[2] |= 0x80
			buf[3] |= 0x80
		}
		if _, err := c.WriteToUDPAddrPort(buf[:n], from); err == nil {
			s.answered.Add(1)
		}
	}
}

func (s *servers) close() {
	for _, c := range s.closers {
		c.Close()
	}
}
