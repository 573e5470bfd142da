package daemon

import (
	"context"
	"time"

	"github.com/l4drop/l4drop/l4drop"
)

// A Component is a part of the daemon that runs beside the loaded rule set:
// the pcapng writer, the sFlow exporter, the auto-mitigation engine, rule
// expiry. The daemon starts its components once the first rule set is
// loaded, in order, and stops them in reverse order.
//
// A component may also be a SampleSink, a Ticker and a Reloader; the daemon
// calls those methods from its own goroutines, never at the same time as
// Start or Stop.
type Component interface {
	// Name names the component in logs and metrics.
	Name() string
	// Start starts the component. ctx ends when the daemon stops; d gives
	// the rule set (Daemon.Do) and the logger. An error stops the daemon's
	// start; the components started before are stopped.
	Start(ctx context.Context, d *Daemon) error
	// Stop flushes and releases what the component holds.
	Stop() error
}

// A SampleSink is a component that consumes the rule set's samples.
type SampleSink interface {
	// Sample hands over one sample. It must not block: a sink that cannot
	// keep up queues or drops, and counts what it dropped. s.Data is the
	// sink's own.
	Sample(s l4drop.Sample)
}

// A Ticker is a component the daemon wakes up periodically (Config.Tick,
// one second by default), for rotation, expiry and decisions.
type Ticker interface {
	Tick(now time.Time)
}

// A Reloader is a component told when a new rule set replaced the old one.
type Reloader interface {
	Reloaded(st *l4drop.State)
}

// A DropCounter is a component that drops samples when it cannot keep up;
// the daemon exports the count as l4drop_sink_dropped_total.
type DropCounter interface {
	Dropped() uint64
}
