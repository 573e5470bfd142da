package lab

import (
	"context"
	"fmt"
	"time"

	"github.com/l4drop/l4drop/internal/netns"
)

// Traffic is what a sender sends: templates through a Generator, or, if
// Frames is not nil, fixed frames through a packet socket (Replay).
type Traffic struct {
	// Templates are the generator's templates, mixed by weight.
	Templates []Template
	// Seed seeds the templates' random fields.
	Seed uint64
	// Frames, if not nil, are sent as they are instead.
	Frames [][]byte
}

// TemplateFrames returns the templates' frames, each as often as its
// weight, for sending with a packet socket (no random fields).
func TemplateFrames(ts []Template) [][]byte {
	var frames [][]byte
	for _, t := range ts {
		for range t.Weight {
			frames = append(frames, t.Frame)
		}
	}
	return frames
}

// ParseTemplates parses each spec with ParseTemplate.
func ParseTemplates(specs []string) ([]Template, error) {
	var ts []Template
	for _, s := range specs {
		t, err := ParseTemplate(s)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// SendFrom sends the traffic out of interface ifname of the network
// namespace named nsName, as 'ip netns' names it ("": the current one).
func (t Traffic) SendFrom(ctx context.Context, nsName, ifname string, opts RunOptions) (Result, error) {
	var ns *netns.NS
	if nsName != "" {
		var err error
		if ns, err = netns.Open(nsName); err != nil {
			return Result{}, err
		}
		defer ns.Close()
	}
	return t.Send(ctx, ns, ifname, opts)
}

// Send sends the traffic from ns (nil: the current namespace) out of
// interface ifname.
func (t Traffic) Send(ctx context.Context, ns *netns.NS, ifname string, opts RunOptions) (Result, error) {
	if t.Frames != nil {
		return Replay(ctx, ns, ifname, t.Frames, opts)
	}
	g, err := NewGenerator(ns, ifname, t.Templates, t.Seed)
	if err != nil {
		return Result{}, fmt.Errorf("%w (try -afpacket)", err)
	}
	defer g.Close()
	return g.Run(ctx, opts)
}

// LabSend is what SendInLab saw.
type LabSend struct {
	// Result is the sender's.
	Result Result
	// ServerIf names the lab's server interface, and Server counts what
	// reached it while the traffic ran.
	ServerIf string
	Server   Counters
}

// drainPause lets the receiving side take the last frames before its
// counters are read.
const drainPause = 50 * time.Millisecond

// SendInLab builds a lab, sends the traffic from its internet side into
// the server, and returns what was sent and what reached the server's
// interface; the lab is removed at the end or on Ctrl-C (ErrInterrupted).
func (t Traffic) SendInLab(opts RunOptions) (LabSend, error) {
	var out LabSend
	err := Run(context.Background(), func(ctx context.Context, l *Lab) error {
		before, err := l.ServerCounters()
		if err != nil {
			return err
		}
		if out.Result, err = t.Send(ctx, l.Inet, l.InetIf, opts); err != nil {
			return err
		}
		time.Sleep(drainPause)
		after, err := l.ServerCounters()
		if err != nil {
			return err
		}
		out.ServerIf, out.Server = l.ServerIf, after.Sub(before)
		return nil
	})
	return out, err
}
