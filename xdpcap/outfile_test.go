package xdpcap

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestOutputFile writes a file many chunks long through an OutputFile in
// the writers' 1 MiB writes and checks it reads back whole, and that the
// page cache did not keep it: most of it must have been dropped behind
// the writes.
func TestOutputFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.pcap")
	o, err := CreateOutput(path)
	if err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	block := make([]byte, writeBufferSize)
	for off := 0; off < size; off += len(block) {
		for i := range block {
			block[i] = byte(off>>20 + i)
		}
		if _, err := o.Write(block); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	cached := cachedBytes(t, path)
	t.Logf("%d of %d bytes in the page cache after the write", cached, size)
	if cached > size/2 {
		t.Errorf("%d of %d bytes written are still in the page cache: the write-behind dropped too little", cached, size)
	}

	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != size {
		t.Fatalf("file has %d bytes, want %d", len(got), size)
	}
	for off := 0; off < size; off += len(block) {
		for i := range block {
			block[i] = byte(off>>20 + i)
		}
		if !bytes.Equal(got[off:off+len(block)], block) {
			t.Fatalf("bytes at %d differ from what was written", off)
		}
	}
}

// cachedBytes returns how much of the file at path is in the page cache.
func cachedBytes(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	// x/sys/unix has no wrapper for mincore.
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		if v&1 != 0 {
			n += page
		}
	}
	return n
}

// TestOutputFileNotRegular writes to a file that is not a regular one,
// where there is nothing to write behind.
func TestOutputFileNotRegular(t *testing.T) {
	o, err := CreateOutput(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	if o.behind != nil {
		t.Error("write-behind started on a character device")
	}
	if _, err := o.Write(make([]byte, 3*writeBehindChunk)); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
}
