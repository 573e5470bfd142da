package xdpcap

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ringReader reads a BPF ring buffer in place, in batches. Where a
// record-at-a-time reader copies each record out and publishes its
// consumer position after each one (a cache line the producing CPUs read
// on every reserve), this one hands out records where they lie and
// publishes its position once per batch: the reader's cost per record is
// what decides whether a capture at millions of packets a second loses
// any.
type ringReader struct {
	mu       sync.Mutex
	consPage []byte // consumer position, ours to write
	prodMap  []byte // producer position page, then the data pages twice
	data     []byte // the data pages, mapped twice in a row
	mask     uint64
	consPos  *uint64
	prodPos  *uint64
	epfd     int
	closeFD  int // an eventfd that wakes a waiting reader on close
	closed   atomic.Bool

	pos       uint64 // next record to read
	limit     uint64 // producer position at the batch's start
	published uint64 // consumer position last stored
}

// ringHeader bits of a record's length word: the producer has not
// submitted the record yet; the producer discarded it.
const (
	ringBusy    = 1 << 31
	ringDiscard = 1 << 30
	ringHdrSize = 8
)

// publishEvery is how many bytes the reader consumes before it hands the
// space back to the producers within a batch.
const publishEvery = 256 << 10

// errRingClosed is returned by a closed ringReader.
var errRingClosed = errors.New("ring buffer reader closed")

func newRingReader(m *ebpf.Map) (_ *ringReader, err error) {
	size := int(m.MaxEntries())
	page := os.Getpagesize()
	r := &ringReader{epfd: -1, closeFD: -1, mask: uint64(size - 1)}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	if r.consPage, err = unix.Mmap(m.FD(), 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("mmap ring buffer consumer page: %w", err)
	}
	if r.prodMap, err = unix.Mmap(m.FD(), int64(page), page+2*size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("mmap ring buffer data: %w", err)
	}
	r.consPos = (*uint64)(unsafe.Pointer(&r.consPage[0]))
	r.prodPos = (*uint64)(unsafe.Pointer(&r.prodMap[0]))
	r.data = r.prodMap[page:]
	if r.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	if r.closeFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	for _, fd := range []int{m.FD(), r.closeFD} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("epoll: %w", err)
		}
	}
	r.pos = atomic.LoadUint64(r.consPos)
	r.limit, r.published = r.pos, r.pos
	return r, nil
}

// next returns the next record's sample, which stays valid until the next
// call, waiting for one until deadline: os.ErrDeadlineExceeded when it
// passes with no record.
func (r *ringReader) next(deadline time.Time) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return nil, errRingClosed
	}
	for {
		if r.pos == r.limit {
			// The batch is done, the last record handed out too.
			r.publish()
			r.limit = atomic.LoadUint64(r.prodPos)
			if r.limit == r.pos {
				if err := r.wait(deadline); err != nil {
					return nil, err
				}
				continue
			}
		}
		if r.pos-r.published >= publishEvery {
			r.publish()
		}
		start := r.pos & r.mask
		// The length word is written last (xchg in the kernel): loading it
		// atomically orders the record's contents before it.
		hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[start])))
		if hdr&ringBusy != 0 {
			// Reserved before later records that are complete, still
			// being written: come back to it shortly.
			r.publish()
			r.limit = r.pos
			if err := r.wait(time.Now().Add(time.Millisecond)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, err
			}
			continue
		}
		n := uint64(hdr &^ (ringBusy | ringDiscard))
		r.pos += (ringHdrSize + n + 7) &^ 7
		if hdr&ringDiscard != 0 {
			continue
		}
		s := (start + ringHdrSize) & r.mask
		return r.data[s : s+n : s+n], nil
	}
}

// publish hands the space up to the record being read back to the
// producers: the caller is done with the records before it.
func (r *ringReader) publish() {
	// The current record was handed out last call; pos is past it.
	if r.pos != r.published {
		atomic.StoreUint64(r.consPos, r.pos)
		r.published = r.pos
	}
}

// wait waits for the producers to wake the reader, or deadline.
func (r *ringReader) wait(deadline time.Time) error {
	timeout := -1
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		timeout = int((d + time.Millisecond - 1) / time.Millisecond)
	}
	var evs [2]unix.EpollEvent
	n, err := unix.EpollWait(r.epfd, evs[:], timeout)
	if errors.Is(err, unix.EINTR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("epoll wait: %w", err)
	}
	if r.closed.Load() {
		return errRingClosed
	}
	if n == 0 && atomic.LoadUint64(r.prodPos) == r.pos {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// close wakes a waiting reader and frees the ring once it is out.
func (r *ringReader) close() {
	if r.closed.Swap(true) {
		return
	}
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(r.closeFD, one[:])
	r.mu.Lock()
	defer r.mu.Unlock()
	r.release()
}

func (r *ringReader) release() {
	if r.consPage != nil {
		_ = unix.Munmap(r.consPage)
		r.consPage = nil
	}
	if r.prodMap != nil {
		_ = unix.Munmap(r.prodMap)
		r.prodMap, r.data = nil, nil
	}
	for _, fd := range []*int{&r.epfd, &r.closeFD} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}
