package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/xdpcap"
)

// OfflineOptions say what MeasureOffline measures.
type OfflineOptions struct {
	// Expr is the filter both commands run.
	Expr string
	// Rounds is how often each input is measured, the commands in turns.
	Rounds int
	// Packets is the length of the capture made of the corpus's Ethernet
	// frames over and over.
	Packets int
	// Captures limits the corpus captures run one by one (0: all).
	Captures int
}

// DefaultOfflineOptions are make bench's: 3 rounds, over 1M packets and
// the whole corpus (about a minute on a quiet two-CPU machine).
func DefaultOfflineOptions() OfflineOptions {
	return OfflineOptions{Expr: "udp", Rounds: 3, Packets: 1_000_000}
}

// Offline is xdpcap -r against tcpdump -r: the same files, the same
// filter, the same output.
type Offline struct {
	Options OfflineOptions
	Rows    []OfflineRow
}

// OfflineRow is one input's figures.
type OfflineRow struct {
	// Name says what the input is.
	Name string
	// Files, Packets and Bytes are the input's size.
	Files, Packets int
	Bytes          int64
	// XDPcap and Tcpdump are the commands' times in each round, summed
	// over the row's files.
	XDPcap, Tcpdump []OfflineTime
	// Differ counts the files whose two outputs differ in size (the
	// filter's first buffer of a multi-buffer packet, say); 0 is
	// expected.
	Differ int
	Err    error
}

// OfflineTime is what a command took: wall time, and CPU time (user and
// system, of the process and its children), which the machine's other
// work moves less.
type OfflineTime struct {
	Wall, CPU time.Duration
}

// Ratio summarizes xdpcap's wall time over tcpdump's, round by round.
func (r OfflineRow) Ratio() Ratio {
	return roundRatios(offlineSeconds(r.XDPcap, false), offlineSeconds(r.Tcpdump, false))
}

// CPURatio summarizes xdpcap's CPU time over tcpdump's, round by round.
func (r OfflineRow) CPURatio() Ratio {
	return roundRatios(offlineSeconds(r.XDPcap, true), offlineSeconds(r.Tcpdump, true))
}

func offlineSeconds(ts []OfflineTime, cpu bool) []float64 {
	v := make([]float64, len(ts))
	for i, t := range ts {
		v[i] = t.Wall.Seconds()
		if cpu {
			v[i] = t.CPU.Seconds()
		}
	}
	return v
}

// medianTime is the median of the rounds' times.
func medianTime(ts []OfflineTime, cpu bool) time.Duration {
	return time.Duration(median(offlineSeconds(ts, cpu)) * float64(time.Second))
}

// MeasureOffline times `xdpcap -r FILE -w OUT EXPR` against `tcpdump -r
// FILE -w OUT EXPR`, in turns (who goes first alternates), o.Rounds times:
// on a capture of o.Packets corpus Ethernet frames it writes to dir, and
// on the corpus captures one after the other, each command once a
// capture, which start-up dominates. Captures tcpdump refuses are left
// out. It needs the source tree: the corpus is found from the working
// directory up. An input that cannot be measured is a row with Err.
func (t Tools) MeasureOffline(ctx context.Context, dir string, o OfflineOptions, logf func(string, ...any)) (*Offline, error) {
	res := &Offline{Options: o}
	var corpus []string
	var frames []fixture.CapturedPacket
	err := runTB("offline", func(string, ...any) {}, func(tb testing.TB) error {
		for _, c := range fixture.CorpusCaptures(tb) {
			if c.LinkType == layers.LinkTypeEthernet {
				frames = append(frames, c.Packets...)
			}
		}
		var err error
		corpus, err = filepath.Glob(filepath.Join(fixture.CorpusDir(tb), "pcap", "*.pcap"))
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(frames) == 0 {
		return nil, errors.New("no Ethernet frames in the corpus")
	}
	sort.Strings(corpus)

	big := OfflineRow{Name: fmt.Sprintf("%d packets, the corpus's Ethernet frames over and over", o.Packets), Files: 1, Packets: o.Packets}
	in := filepath.Join(dir, "offline.pcap")
	big.Bytes, big.Err = writeFrames(in, frames, o.Packets)
	defer os.Remove(in)
	res.Rows = append(res.Rows, big)

	// The captures tcpdump takes, with the filter.
	small := OfflineRow{}
	var kept []string
	defer os.Remove(filepath.Join(dir, "offline-check.pcap"))
	for _, path := range corpus {
		if o.Captures > 0 && len(kept) == o.Captures {
			break
		}
		if _, err := offlineRun(ctx, "tcpdump", path, filepath.Join(dir, "offline-check.pcap"), o.Expr); err != nil {
			continue
		}
		kept = append(kept, path)
		if st, err := os.Stat(path); err == nil {
			small.Bytes += st.Size()
		}
	}
	small.Name = fmt.Sprintf("%d corpus captures, one after the other", len(kept))
	small.Files = len(kept)
	if len(kept) == 0 {
		small.Err = errors.New("tcpdump takes none of the corpus captures")
	}
	res.Rows = append(res.Rows, small)

	files := [][]string{{in}, kept}
	outX, outT := filepath.Join(dir, "offline-xdpcap.pcap"), filepath.Join(dir, "offline-tcpdump.pcap")
	defer os.Remove(outX)
	defer os.Remove(outT)
	for round := range o.Rounds {
		for i := range res.Rows {
			row := &res.Rows[i]
			if row.Err != nil {
				continue
			}
			var x, td OfflineTime
			for _, path := range files[i] {
				if ctx.Err() != nil {
					return nil, lab.ErrInterrupted
				}
				var err error
				var dx, dt OfflineTime
				// In turns: who goes first alternates with the round.
				if round%2 == 0 {
					if dt, err = offlineRun(ctx, "tcpdump", path, outT, o.Expr); err == nil {
						dx, err = offlineRun(ctx, t.XDPcap, path, outX, o.Expr)
					}
				} else if dx, err = offlineRun(ctx, t.XDPcap, path, outX, o.Expr); err == nil {
					dt, err = offlineRun(ctx, "tcpdump", path, outT, o.Expr)
				}
				if err != nil {
					row.Err = err
					break
				}
				x.Wall, x.CPU = x.Wall+dx.Wall, x.CPU+dx.CPU
				td.Wall, td.CPU = td.Wall+dt.Wall, td.CPU+dt.CPU
				if round == 0 && !sameSize(outX, outT) {
					row.Differ++
				}
			}
			if row.Err != nil {
				continue
			}
			row.XDPcap = append(row.XDPcap, x)
			row.Tcpdump = append(row.Tcpdump, td)
			logf("xdpcap -r against tcpdump -r, %s, round %d: %.3f s against %.3f s (CPU %.3f s against %.3f s)",
				row.Name, round+1, x.Wall.Seconds(), td.Wall.Seconds(), x.CPU.Seconds(), td.CPU.Seconds())
		}
	}
	for i := range res.Rows {
		if res.Rows[i].Err == nil && len(res.Rows[i].XDPcap) == 0 {
			res.Rows[i].Err = errors.New("no round measured")
		}
	}
	return res, nil
}

// offlineRun runs `bin -r in -w out expr` and returns its times.
func offlineRun(ctx context.Context, bin, in, out, expr string) (OfflineTime, error) {
	cmd := exec.CommandContext(ctx, bin, "-r", in, "-w", out, expr)
	start := time.Now()
	b, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if err != nil {
		return OfflineTime{}, fmt.Errorf("%s -r %s: %w: %s", filepath.Base(bin), filepath.Base(in), err, oneLine(strings.TrimSpace(string(b))))
	}
	st := cmd.ProcessState
	return OfflineTime{Wall: wall, CPU: st.UserTime() + st.SystemTime()}, nil
}

// sameSize reports whether files a and b have the same size: the same
// records (pcap, microsecond or nanosecond, has the same layout).
func sameSize(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && sa.Size() == sb.Size()
}

// writeFrames writes n packets, frames over and over, to a pcap file at
// path, and returns its size.
func writeFrames(path string, frames []fixture.CapturedPacket, n int) (int64, error) {
	return writeCapture(path, n, func(i int) xdpcap.Packet {
		p := frames[i%len(frames)]
		return xdpcap.Packet{Time: p.Time, Length: p.Length, Data: p.Data}
	})
}

// writeCapture writes n packets, packet(i) the i-th, to a pcap file of
// Ethernet frames at path, and returns its size.
func writeCapture(path string, n int, packet func(i int) xdpcap.Packet) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w, err := xdpcap.NewPcapWriter(f, layers.LinkTypeEthernet, xdpcap.DefaultSnapLen)
	if err != nil {
		return 0, err
	}
	for i := range n {
		if err := w.WritePacket(packet(i)); err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
	}
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	// On disk before the timing starts, so that writing it back does not
	// slow the first commands down.
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), f.Close()
}

// targets are the Against-the-targets lines: each input's wall-time
// ratio, against the 2×.
func (o *Offline) targets() [][3]string {
	if o == nil {
		return nil
	}
	var lines [][3]string
	for _, r := range o.Rows {
		if r.Err == nil {
			lines = append(lines, [3]string{fmt.Sprintf("`xdpcap -r` vs `tcpdump -r`, `%s`, %s: time", o.Options.Expr, r.Name),
				r.Ratio().format(2, "×"), "≤ 2×"})
		}
	}
	return lines
}

// markdown writes the section of the report.
func (o *Offline) markdown(b *strings.Builder) {
	if o == nil || len(o.Rows) == 0 {
		return
	}
	fmt.Fprintf(b, "\n## Offline filtering: xdpcap -r against tcpdump -r\n\n`xdpcap -r FILE -w OUT %s` against `tcpdump -r FILE -w OUT %s`, "+
		"the two commands in turns (who goes first alternates), %d rounds: on a capture of the corpus's Ethernet frames over and "+
		"over, and on the corpus captures (those tcpdump takes) one after the other, each command run once a capture, so that "+
		"start-up (the process, libpcap's compiler; for xdpcap also cbpfc, loading the capture program, a namespace to run it in, "+
		"the kernel's check of the interpreter on the first packets) counts as it does for a user. Times are wall times summed over "+
		"the row's files, the median round's; CPU is user and system time. The ratios are the median over the rounds of xdpcap's "+
		"time over tcpdump's in the same round, with the quartiles (with fewer than 4 rounds, the extremes) in parentheses.\n\n",
		o.Options.Expr, o.Options.Expr, o.Options.Rounds)
	b.WriteString("| input | size | tcpdump -r | xdpcap -r | xdpcap / tcpdump | CPU: tcpdump | CPU: xdpcap | CPU: xdpcap / tcpdump |\n" +
		"|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range o.Rows {
		if r.Err != nil {
			fmt.Fprintf(b, "| %s | | failed: %s | | | | | |\n", r.Name, oneLine(r.Err.Error()))
			continue
		}
		size := fmt.Sprintf("%.1f MB", float64(r.Bytes)/1e6)
		fmt.Fprintf(b, "| %s | %s | %.3f s | %.3f s | %s | %.3f s | %.3f s | %s |\n", r.Name, size,
			medianTime(r.Tcpdump, false).Seconds(), medianTime(r.XDPcap, false).Seconds(), r.Ratio().format(2, "×"),
			medianTime(r.Tcpdump, true).Seconds(), medianTime(r.XDPcap, true).Seconds(), r.CPURatio().format(2, "×"))
	}
	for _, r := range o.Rows {
		if r.Err == nil && r.Files > 1 {
			fmt.Fprintf(b, "\nOn the corpus captures a command's run is mostly its start-up: %.1f ms a capture for tcpdump, %.1f ms for xdpcap "+
				"(wall, the median round's mean; CPU %.1f and %.1f ms).\n", 1000*medianTime(r.Tcpdump, false).Seconds()/float64(r.Files),
				1000*medianTime(r.XDPcap, false).Seconds()/float64(r.Files), 1000*medianTime(r.Tcpdump, true).Seconds()/float64(r.Files),
				1000*medianTime(r.XDPcap, true).Seconds()/float64(r.Files))
		}
		if r.Err == nil && r.Differ > 0 {
			fmt.Fprintf(b, "\n%s: the two outputs differ in size for %d of %d files.\n", r.Name, r.Differ, r.Files)
		}
	}
}
