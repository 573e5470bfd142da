package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/internal/netns"
	"github.com/l4drop/l4drop/internal/pcapfile"
)

// replayBatch is how many frames one sendmmsg call hands the kernel.
const replayBatch = 256

// Replay sends frames, in order and over again, out of ifname in ns (nil:
// the current namespace) with an AF_PACKET socket that bypasses the qdisc,
// many frames per sendmmsg call. It is slower than a Generator (about
// 0.85 Mpps against 10 here) but sends any frames as they are: a capture
// being replayed, or traffic where live frames are not available. Count,
// Duration, Rate and Progress of opts apply; Count 0 sends each frame once
// unless Duration is set.
func Replay(ctx context.Context, ns *netns.NS, ifname string, frames [][]byte, opts RunOptions) (Result, error) {
	var res Result
	if len(frames) == 0 {
		return res, errors.New("replay: no frames")
	}
	count := opts.Count
	if count == 0 && opts.Duration == 0 {
		count = uint64(len(frames))
	}
	err := inNS(ns, func() error {
		fd, err := packetSocket(ifname)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		iovs := make([]unix.Iovec, replayBatch)
		msgs := make([]unix.Mmsghdr, replayBatch)
		pace := newPacer(opts)
		start := pace.start
		next := 0 // index of the next frame to send
		for {
			if ctx.Err() != nil || (opts.Duration > 0 && time.Since(start) >= opts.Duration) {
				break
			}
			n := uint64(replayBatch)
			if count > 0 {
				if res.Sent >= count {
					break
				}
				n = min(n, count-res.Sent)
			}
			if opts.Rate > 0 {
				n = min(n, max(1, uint64(opts.Rate/1000)))
			}
			for i := range n {
				f := frames[(next+int(i))%len(frames)]
				iovs[i].Base = &f[0]
				iovs[i].SetLen(len(f))
				msgs[i].Hdr = unix.Msghdr{Iov: &iovs[i], Iovlen: 1}
			}
			r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(n), 0, 0, 0)
			if errno != 0 {
				if errno == unix.ENOBUFS || errno == unix.EAGAIN || errno == unix.EINTR {
					continue
				}
				return fmt.Errorf("sendmmsg: %w", errno)
			}
			next = (next + int(r)) % len(frames)
			res.Sent += uint64(r)
			pace.tick(ctx, &res)
		}
		res.Elapsed = time.Since(start)
		if s := res.Elapsed.Seconds(); s > 0 {
			res.PPS = float64(res.Sent) / s
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("replay: %w", err)
	}
	return res, nil
}

// packetSocket opens a packet socket that sends out of ifname (in the
// calling thread's namespace) straight to the driver: no qdisc, no
// queueing discipline's lock.
func packetSocket(ifname string) (int, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind to %s: %w", ifname, err)
	}
	return fd, nil
}

// ReadFrames reads the frames of a pcap or pcapng capture of Ethernet
// frames, for Replay. Frames shorter than an Ethernet header are skipped.
func ReadFrames(path string) ([][]byte, error) {
	r, f, err := pcapfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if lt := r.LinkType(); lt != layers.LinkTypeEthernet {
		return nil, fmt.Errorf("%s: link type %s, want Ethernet frames", path, lt)
	}
	var frames [][]byte
	for {
		d, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: packet %d: %w", path, len(frames)+1, err)
		}
		if len(d) < 14 {
			continue
		}
		frames = append(frames, append([]byte(nil), d...))
	}
	if len(frames) == 0 {
		return nil, fmt.Errorf("%s: no frames", path)
	}
	return frames, nil
}
