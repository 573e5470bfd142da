package xdpcap

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Write-behind: a chunk is handed to the kernel for writeback once it is
// written, and dropped from the page cache dropLag later, by when the disk
// has usually taken it.
const (
	writeBehindChunk = 8 << 20
	dropLag          = 4 * writeBehindChunk
	// dropRetry is how far behind dropLag a range is advised again: pages
	// still under writeback at the first advice are kept by the kernel.
	dropRetry = 8 * writeBehindChunk
)

// OutputFile is a capture file written from start to end. On a regular
// file it writes behind: each chunk written is handed to the kernel for
// writeback at once and dropped from the page cache a few chunks later,
// as `dd oflag=nocache` does. A capture of many gigabytes then neither
// fills the page cache (evicting what the machine's services keep there)
// nor writes into fresh memory: the page cache's new pages are the ones it
// dropped a moment ago. On a virtual machine whose host takes back its
// guest's free memory, fresh pages cost a fault in the host each; there a
// plain write of a 2 GB file ran at 0.4 GB/s and this at 2.0-2.4 GB/s,
// which is what a capture of 3 Mpps needs not to lose packets
// (docs/xdpcap.md). Where the disk is slower than the capture, the pages
// not yet on disk stay cached, as for any write.
//
// The kernel calls run on a goroutine of their own, so that a Write never
// waits for the disk.
type OutputFile struct {
	f      *os.File
	off    int64 // bytes written
	next   int64 // off at which the next chunk is handed on
	behind chan int64
	done   chan struct{}
}

// CreateOutput creates or truncates the file at path for a capture.
func CreateOutput(path string) (*OutputFile, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	o := &OutputFile{f: f, next: writeBehindChunk}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		o.behind = make(chan int64, 1)
		o.done = make(chan struct{})
		go o.writeBehind(int(f.Fd()))
	}
	return o, nil
}

// Write implements io.Writer.
func (o *OutputFile) Write(p []byte) (int, error) {
	n, err := o.f.Write(p)
	o.off += int64(n)
	if o.behind != nil && o.off >= o.next {
		select {
		case o.behind <- o.off:
		default: // busy with the last chunk: it takes this one with the next
		}
		o.next = o.off + writeBehindChunk
	}
	return n, err
}

// Close closes the file. It does not wait for the disk.
func (o *OutputFile) Close() error {
	if o.behind != nil {
		close(o.behind)
		<-o.done
		o.behind = nil
	}
	if err := o.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", o.f.Name(), err)
	}
	return nil
}

// writeBehind starts writeback of what was written up to each offset it
// receives, and drops what lies dropLag behind it from the page cache.
// Errors are not reported: both calls are advice, and a failed write
// shows in Write or Close.
func (o *OutputFile) writeBehind(fd int) {
	defer close(o.done)
	var started, dropped int64
	for off := range o.behind {
		_ = unix.SyncFileRange(fd, started, off-started, unix.SYNC_FILE_RANGE_WRITE)
		started = off
		end := off - dropLag
		if end <= dropped {
			continue
		}
		_ = unix.Fadvise(fd, dropped, end-dropped, unix.FADV_DONTNEED)
		dropped = max(dropped, end-dropRetry)
	}
}
