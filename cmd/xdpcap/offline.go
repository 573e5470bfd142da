package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/pcapfile"
	"github.com/l4drop/l4drop/xdpcap"
	"github.com/l4drop/l4drop/xdpcap/filter"
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
	prog, err := filter.Parse(strings.Join(exprArgs, " "), cbpf.LinkTypeFromPcap(uint32(fileLT)), cfg.snapLen)
	if err != nil {
		return err
	}
	if err := needRoot(); err != nil {
		return err
	}

	o := filter.Options{Filter: prog, SnapLen: cfg.snapLen, Count: cfg.count, Name: in, FileSnapLen: r.SnapLen()}
	if out != "" {
		var dst io.Writer = stdout
		if out != "-" {
			f, err := xdpcap.CreateOutput(out)
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
		if o.Output, err = xdpcap.NewWriter(dst, xdpcap.OutputFormat(out, cfg.format), fileLT, cfg.snapLen, []string{"offline"}); err != nil {
			return err
		}
	}
	res, err := filter.Apply(r, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%d packets matched of %d\n", res.Matched, res.Packets)
	if res.Interpreted > 0 {
		fmt.Fprintf(stderr, "%d packets shorter than %d bytes or longer than a multi-buffer XDP packet were filtered by libpcap's interpreter\n",
			res.Interpreted, xdpcap.MinPacketLen)
	}
	return nil
}
