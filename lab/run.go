package lab

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Run creates a lab, runs fn in it and removes the lab, whatever happens:
// fn returning, fn failing, or SIGINT/SIGTERM, which cancel the context fn
// receives. Commands use Run so that Ctrl-C never leaves a lab behind.
func Run(ctx context.Context, fn func(ctx context.Context, l *Lab) error) (err error) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Whatever an earlier, killed run left.
	_, _ = Clean()
	l, err := New()
	if err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, l.Close())
	}()
	defer func() {
		// A panic in fn must not leave namespaces behind either.
		if r := recover(); r != nil {
			l.Close()
			panic(r)
		}
	}()
	err = fn(ctx, l)
	if err == nil && ctx.Err() != nil {
		err = ErrInterrupted
	}
	return err
}

// ErrInterrupted is returned by Run when a signal ended the run.
var ErrInterrupted = errors.New("interrupted")

// Output collects the output of a command run in a lab while another
// goroutine reads it: a command's stdout or stderr, as it runs.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

// Bytes returns a copy of what was written so far.
func (o *Output) Bytes() []byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	return bytes.Clone(o.buf.Bytes())
}

// String returns what was written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}
