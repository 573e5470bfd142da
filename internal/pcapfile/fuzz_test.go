package pcapfile_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/l4drop/l4drop/internal/pcapfile"
)

// FuzzReader reads corrupt captures: the reader returns an error or
// packets, never panics, and never hands out more than a record holds.
func FuzzReader(f *testing.F) {
	pkts := [][]byte{make([]byte, 60), bytes.Repeat([]byte{0xab}, 1514)}
	f.Add(write(&testing.T{}, pkts, func(w io.Writer) (packetWriter, error) {
		pw := pcapgo.NewWriter(w)
		return pw, pw.WriteFileHeader(65535, layers.LinkTypeEthernet)
	}))
	f.Add(write(&testing.T{}, pkts, func(w io.Writer) (packetWriter, error) {
		return pcapgo.NewNgWriter(w, layers.LinkTypeEthernet)
	}))
	// The corpus's captures, cut short: their headers and first records.
	paths, _ := filepath.Glob("../../../shared/corpus/pcap/*")
	for i, p := range paths {
		if i%20 != 0 {
			continue
		}
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b[:min(len(b), 2048)])
		}
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		r, err := pcapfile.NewReader(bytes.NewReader(file))
		if err != nil {
			return
		}
		r.LinkType()
		r.SnapLen()
		for range 10000 {
			data, ci, err := r.ReadPacketData()
			if err != nil {
				return
			}
			if ci.CaptureLength != len(data) || len(data) > pcapfile.MaxRecord || len(data) > len(file) {
				t.Fatalf("record of %d bytes, CaptureLength %d, from a file of %d", len(data), ci.CaptureLength, len(file))
			}
		}
	})
}
