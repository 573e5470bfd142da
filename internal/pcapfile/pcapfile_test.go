package pcapfile_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/l4drop/l4drop/internal/pcapfile"
)

func readAll(t *testing.T, file []byte) (*pcapfile.Reader, [][]byte, error) {
	t.Helper()
	r, err := pcapfile.NewReader(bytes.NewReader(file))
	if err != nil {
		return nil, nil, err
	}
	var pkts [][]byte
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return r, pkts, err
		}
		if ci.CaptureLength != len(data) {
			t.Fatalf("CaptureLength %d, data %d bytes", ci.CaptureLength, len(data))
		}
		pkts = append(pkts, data)
	}
}

type packetWriter interface {
	WritePacket(gopacket.CaptureInfo, []byte) error
}

// write writes pkts through w, made on a fresh buffer by newWriter.
func write(t *testing.T, pkts [][]byte, newWriter func(io.Writer) (packetWriter, error)) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := newWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, 123456000), CaptureLength: len(p), Length: len(p)}
		if err := w.WritePacket(ci, p); err != nil {
			t.Fatal(err)
		}
	}
	if f, ok := w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestFormats(t *testing.T) {
	pkts := [][]byte{bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 14)}
	pcapFile := write(t, pkts, func(w io.Writer) (packetWriter, error) {
		pw := pcapgo.NewWriter(w)
		return pw, pw.WriteFileHeader(65535, layers.LinkTypeRaw)
	})
	files := map[string][]byte{
		"pcap": pcapFile,
		"pcap-ns": write(t, pkts, func(w io.Writer) (packetWriter, error) {
			pw := pcapgo.NewWriterNanos(w)
			return pw, pw.WriteFileHeader(65535, layers.LinkTypeRaw)
		}),
		"pcapng": write(t, pkts, func(w io.Writer) (packetWriter, error) {
			return pcapgo.NewNgWriter(w, layers.LinkTypeRaw)
		}),
	}
	for name, file := range files {
		r, got, err := readAll(t, file)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.LinkType() != layers.LinkTypeRaw || len(got) != len(pkts) || !bytes.Equal(got[0], pkts[0]) || !bytes.Equal(got[1], pkts[1]) {
			t.Errorf("%s: link type %v, %d packets; want raw, %d packets equal to those written", name, r.LinkType(), len(got), len(pkts))
		}
	}

	// A record whose captured length exceeds its wire length (libpcap reads
	// those) and a file cut inside the last record.
	odd := append([]byte(nil), pcapFile...)
	le := func(off int, v uint32) {
		odd[off], odd[off+1], odd[off+2], odd[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	le(24+12, 10) // first record: wire length 10 < captured 60
	_, got, err := readAll(t, odd[:len(odd)-3])
	if len(got) != 1 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("odd file: %d packets, %v; want 1 and ErrUnexpectedEOF", len(got), err)
	}

	if _, err := pcapfile.NewReader(bytes.NewReader([]byte("hello, world, this is text"))); !errors.Is(err, pcapfile.ErrFormat) {
		t.Errorf("text: %v, want ErrFormat", err)
	}
}

// TestZeroCopy reads the same file with ReadPacketData and
// ZeroCopyReadPacketData, with a record longer than the reader's buffer
// and an empty one: the packets must agree, and ReadPacketData's must
// stay intact after later reads.
func TestZeroCopy(t *testing.T) {
	pkts := [][]byte{bytes.Repeat([]byte{1}, 60), {}, bytes.Repeat([]byte{2}, 300000), bytes.Repeat([]byte{3}, 1500), bytes.Repeat([]byte{4}, 14)}
	for _, tc := range []struct {
		name      string
		newWriter func(io.Writer) (packetWriter, error)
	}{
		{"pcap", func(w io.Writer) (packetWriter, error) {
			pw := pcapgo.NewWriter(w)
			return pw, pw.WriteFileHeader(400000, layers.LinkTypeEthernet)
		}},
		{"pcapng", func(w io.Writer) (packetWriter, error) {
			return pcapgo.NewNgWriter(w, layers.LinkTypeEthernet)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := write(t, pkts, tc.newWriter)
			_, copied, err := readAll(t, file)
			if err != nil {
				t.Fatal(err)
			}
			r, err := pcapfile.NewReader(bytes.NewReader(file))
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; ; i++ {
				data, ci, err := r.ZeroCopyReadPacketData()
				if errors.Is(err, io.EOF) {
					if i != len(pkts) {
						t.Errorf("%d packets, want %d", i, len(pkts))
					}
					break
				}
				if err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				if i >= len(pkts) || !bytes.Equal(data, pkts[i]) || !bytes.Equal(copied[i], pkts[i]) || ci.CaptureLength != len(pkts[i]) {
					t.Fatalf("packet %d: %d bytes (copied: %d), want %d", i, len(data), len(copied[min(i, len(copied)-1)]), len(pkts[min(i, len(pkts)-1)]))
				}
			}
		})
	}
}

// TestSnapLen reads the snap length of pcap and pcapng headers: 0 when it
// sets no limit below libpcap's largest.
func TestSnapLen(t *testing.T) {
	pkts := [][]byte{bytes.Repeat([]byte{1}, 60)}
	for _, tc := range []struct {
		snap uint32
		want int
	}{{0, 0}, {72, 72}, {65535, 65535}, {262144, 0}, {300000, 0}} {
		files := map[string][]byte{
			"pcap": write(t, pkts, func(w io.Writer) (packetWriter, error) {
				pw := pcapgo.NewWriter(w)
				return pw, pw.WriteFileHeader(tc.snap, layers.LinkTypeEthernet)
			}),
			"pcapng": write(t, pkts, func(w io.Writer) (packetWriter, error) {
				return pcapgo.NewNgWriterInterface(w, pcapgo.NgInterface{LinkType: layers.LinkTypeEthernet, SnapLength: tc.snap}, pcapgo.DefaultNgWriterOptions)
			}),
		}
		for name, file := range files {
			r, err := pcapfile.NewReader(bytes.NewReader(file))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if _, _, err := r.ReadPacketData(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got := r.SnapLen(); got != tc.want {
				t.Errorf("%s, snap length %d in the header: SnapLen %d, want %d", name, tc.snap, got, tc.want)
			}
		}
	}
}
