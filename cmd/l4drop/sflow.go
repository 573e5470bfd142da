package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/daemon"
)

// exportSamples is `l4drop samples --sflow`: the samples of the loaded set
// go out as sFlow, as `l4drop run --sflow` sends them, until count samples
// or ctx ends.
func exportSamples(ctx context.Context, h *l4drop.Handle, ifl ifaceFlags, collectors, agent string, count int, stderr io.Writer) error {
	s, err := daemon.NewSFlow(strings.Split(collectors, ","), agent)
	if err != nil {
		return err
	}
	rd, err := h.NewSampleReader(0, 0)
	if err != nil {
		return fmt.Errorf("sample reader: %w", err)
	}
	defer rd.Close()
	load := l4drop.LoadOptions{Iface: *ifl.iface, Netns: *ifl.netns}
	do := func(fn func(*l4drop.Handle) error) error { return fn(h) }
	if err := s.StartWith(ctx, load, do, slog.New(slog.NewTextHandler(stderr, nil))); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	n := 0
	for count == 0 || n < count {
		smp, err := rd.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.Stop()
			return fmt.Errorf("samples: %w", err)
		}
		s.Sample(smp)
		n++
	}
	err = s.Stop() // sends what it holds
	st := s.Stats()
	fmt.Fprintf(stderr, "%d samples exported in %d datagrams, %d samples lost, %d datagrams lost\n",
		st.Samples, st.Datagrams, st.SamplesLost, st.DatagramsLost)
	return err
}
