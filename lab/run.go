package lab

import (
	"context"
	"errors"
	"os"
	"os/signal"
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
