package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/l4drop/l4drop/internal/fixture"
)

// DNSSink is a UDP socket on the server side that counts the DNS queries it
// receives: those for one name (the legitimate traffic) and the others.
type DNSSink struct {
	conn          *net.UDPConn
	name          []byte // wire format
	named, others atomic.Uint64
	done          chan struct{}
}

// ListenDNS opens a DNSSink on the server's port, counting queries for name
// apart from the others.
func (l *Lab) ListenDNS(port int, name string) (*DNSSink, error) {
	s := &DNSSink{done: make(chan struct{}), name: fixture.DNSName(name)}
	err := l.Server.Do(func() error {
		c, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
		if err != nil {
			return err
		}
		// Small on purpose, like a busy server's: a flood fills it.
		_ = c.SetReadBuffer(256 << 10)
		s.conn = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lab: DNS sink on port %d: %w", port, err)
	}
	go s.serve()
	return s, nil
}

func (s *DNSSink) serve() {
	defer close(s.done)
	buf := make([]byte, 2048)
	for {
		n, err := s.conn.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		if n >= 12+len(s.name) && bytes.EqualFold(buf[12:12+len(s.name)], s.name) {
			s.named.Add(1)
		} else {
			s.others.Add(1)
		}
	}
}

// Counts returns the queries received so far for the name and for others.
func (s *DNSSink) Counts() (named, others uint64) {
	return s.named.Load(), s.others.Load()
}

// Close stops the sink.
func (s *DNSSink) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}
