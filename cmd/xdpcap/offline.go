package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/pcapfile"
	"github.com/l4drop/l4drop/xdpcap"
)

// offline runs the capture filter over the packets of a file with
// BPF_PROG_TEST_RUN and writes the matches.
func offline(in, out string, exprArgs []string, cfg config, stdout, stderr io.Writer) (err error) {
	var src io.Reader = os.Stdin
	if in != "-" {
		f, err := os.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		src = f
	}
	r, err := pcapfile.NewReader(src)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	fileLT := r.LinkType()
	filter, err := compile(exprArgs, cbpf.LinkTypeFromPcap(uint32(fileLT)), cfg.snapLen)
	if err != nil {
		return err
	}
	if err := needRoot(); err != nil {
		return err
	}

	var w xdpcap.PacketWriter
	if out != "" {
		var dst io.Writer = stdout
		if out != "-" {
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			defer func() {
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}()
			dst = f
		}
		format := cfg.format
		if format == "" {
			format = "pcap"
			if bytes.HasSuffix([]byte(out), []byte(".pcapng")) {
				format = "pcapng"
			}
		}
		if w, err = newWriter(dst, format, fileLT, cfg.snapLen, []string{"offline"}); err != nil {
			return err
		}
	}

	tf, err := xdpcap.NewTestFilter(filter, cfg.snapLen)
	if err != nil {
		return err
	}
	defer tf.Close()

	total, matched, interpreted := 0, 0, 0
	for cfg.count == 0 || matched < cfg.count {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: packet %d: %w", in, total+1, err)
		}
		total++
		ok, p, err := tf.Match(data)
		if errors.Is(err, xdpcap.ErrPacketSize) {
			// XDP never sees such a packet; libpcap's interpreter
			// stands in, so the output still answers the filter.
			interpreted++
			ok = filter == nil || cbpf.Interpret(filter, data, max(ci.Length, len(data))) != 0
			p = xdpcap.Packet{Action: xdpcap.Pass, Data: data[:min(len(data), cfg.snapLen)]}
			err = nil
		}
		if err != nil {
			return fmt.Errorf("%s: packet %d: %w", in, total, err)
		}
		if !ok {
			continue
		}
		matched++
		if w == nil {
			continue
		}
		p.Time = ci.Timestamp
		p.Length = max(ci.Length, len(data))
		if err := w.WritePacket(p); err != nil {
			return err
		}
	}
	if w != nil {
		if err := w.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "%d packets matched of %d\n", matched, total)
	if interpreted > 0 {
		fmt.Fprintf(stderr, "%d packets shorter than %d bytes or longer than a multi-buffer XDP packet were filtered by libpcap's interpreter\n",
			interpreted, xdpcap.MinPacketLen)
	}
	return nil
}
