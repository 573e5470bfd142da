package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4drop/l4drop/l4drop"
)

// PcapDir is a component that writes samples to rotating pcapng files,
// samples-TIME.pcapng in a directory, keeping the newest few.
type PcapDir struct {
	dir    string
	rotate time.Duration
	keep   int

	d       *Daemon
	ch      chan l4drop.Sample
	rot     chan struct{}
	done    chan struct{}
	dropped atomic.Uint64
	once    sync.Once
	err     error
}

// NewPcapDir returns a PcapDir writing in dir, a new file every rotate, the
// newest keep kept.
func NewPcapDir(dir string, rotate time.Duration, keep int) (*PcapDir, error) {
	switch {
	case dir == "":
		return nil, fmt.Errorf("%w: pcapng: no directory", ErrConfig)
	case rotate <= 0:
		return nil, fmt.Errorf("%w: --rotate %v: want > 0", ErrConfig, rotate)
	case keep < 1:
		return nil, fmt.Errorf("%w: --keep %d: want at least 1", ErrConfig, keep)
	}
	return &PcapDir{dir: dir, rotate: rotate, keep: keep}, nil
}

// Name returns "pcapng".
func (p *PcapDir) Name() string { return "pcapng" }

// Start creates the directory and starts the writer.
func (p *PcapDir) Start(ctx context.Context, d *Daemon) error {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return fmt.Errorf("pcapng: %w", err)
	}
	p.d = d
	p.ch = make(chan l4drop.Sample, 4096)
	p.rot = make(chan struct{}, 1)
	p.done = make(chan struct{})
	f, err := p.newFile()
	if err != nil {
		return err
	}
	go p.write(f)
	return nil
}

// Sample queues s for writing, or drops it when the queue is full.
func (p *PcapDir) Sample(s l4drop.Sample) {
	select {
	case p.ch <- s:
	default:
		p.dropped.Add(1)
	}
}

// Dropped returns how many samples the writer could not keep up with.
func (p *PcapDir) Dropped() uint64 { return p.dropped.Load() }

// Tick starts a new file when the current one is rotate old.
func (p *PcapDir) Tick(time.Time) {
	select {
	case p.rot <- struct{}{}:
	default:
	}
}

// Stop writes what is queued and closes the file.
func (p *PcapDir) Stop() error {
	p.once.Do(func() { close(p.ch) })
	<-p.done
	return p.err
}

type sampleFile struct {
	f       *os.File
	bw      *bufio.Writer
	sw      *l4drop.SampleWriter
	started time.Time
}

func (p *PcapDir) newFile() (*sampleFile, error) {
	var snaplen uint32
	if err := p.d.Do(func(h *l4drop.Handle) error { snaplen = h.State.Meta.Snaplen; return nil }); err != nil {
		return nil, err
	}
	name := filepath.Join(p.dir, fmt.Sprintf("samples-%s.pcapng", time.Now().UTC().Format("20060102T150405.000")))
	f, err := os.Create(name)
	if err != nil {
		return nil, fmt.Errorf("pcapng: %w", err)
	}
	bw := bufio.NewWriter(f)
	sw, err := l4drop.NewSampleWriter(bw, p.d.cfg.Load.Iface, snaplen)
	if err != nil {
		f.Close()
		return nil, err
	}
	p.prune()
	return &sampleFile{f, bw, sw, time.Now()}, nil
}

func (sf *sampleFile) flush() error { return errors.Join(sf.sw.Flush(), sf.bw.Flush()) }

func (sf *sampleFile) close() error { return errors.Join(sf.flush(), sf.f.Close()) }

// prune keeps the newest keep sample files.
func (p *PcapDir) prune() {
	files, _ := filepath.Glob(filepath.Join(p.dir, "samples-*.pcapng"))
	sort.Strings(files)
	for len(files) > p.keep {
		if err := os.Remove(files[0]); err != nil {
			p.d.log.Warn("pcapng: prune", "err", err)
		}
		files = files[1:]
	}
}

func (p *PcapDir) write(sf *sampleFile) {
	defer close(p.done)
	fail := func(err error) {
		p.d.log.Error("pcapng", "err", err)
		p.err = err
	}
	for {
		select {
		case s, ok := <-p.ch:
			if !ok {
				if sf != nil {
					if err := sf.close(); err != nil {
						fail(err)
					}
				}
				return
			}
			if sf == nil {
				p.dropped.Add(1) // no file until the next tick makes one
				continue
			}
			if err := sf.sw.Write(s); err != nil {
				fail(err)
			}
		case <-p.rot:
			if sf != nil {
				if err := sf.flush(); err != nil {
					fail(err)
				}
				if time.Since(sf.started) < p.rotate {
					continue
				}
				if err := sf.close(); err != nil {
					fail(err)
				}
			}
			var err error
			if sf, err = p.newFile(); err != nil {
				fail(err)
			}
		}
	}
}
