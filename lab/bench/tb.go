package bench

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

// runTB runs fn with a testing.TB outside of `go test`, for measurement
// code written against the test fixtures (internal/corpusbench). Fatal and
// Skip end fn with an error; cleanups run when fn returns. Only the methods
// those fixtures call are implemented; the embedded nil interface makes any
// other call panic, which runTB reports as an error too.
func runTB(name string, logf func(string, ...any), fn func(tb testing.TB) error) (err error) {
	t := &cliTB{name: name, logf: logf}
	defer func() {
		for _, c := range slices.Backward(t.cleanups) {
			c()
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			var stop tbStop
			if e, ok := r.(tbStop); ok {
				stop = e
				err = errors.New(stop.msg)
				return
			}
			err = fmt.Errorf("%s: %v", name, r)
		}
	}()
	if err := fn(t); err != nil {
		return err
	}
	if len(t.errors) > 0 {
		return errors.New(t.errors[0])
	}
	return nil
}

type tbStop struct{ msg string }

type cliTB struct {
	testing.TB
	name     string
	logf     func(string, ...any)
	cleanups []func()
	errors   []string
}

func (t *cliTB) Helper()                    {}
func (t *cliTB) Name() string               { return t.name }
func (t *cliTB) Cleanup(f func())           { t.cleanups = append(t.cleanups, f) }
func (t *cliTB) Failed() bool               { return len(t.errors) > 0 }
func (t *cliTB) Fatal(args ...any)          { panic(tbStop{fmt.Sprint(args...)}) }
func (t *cliTB) Skip(args ...any)           { panic(tbStop{"skipped: " + fmt.Sprint(args...)}) }
func (t *cliTB) FailNow()                   { panic(tbStop{"failed"}) }
func (t *cliTB) Error(args ...any)          { t.errors = append(t.errors, fmt.Sprint(args...)) }
func (t *cliTB) Log(args ...any)            { t.logf("%s", fmt.Sprint(args...)) }
func (t *cliTB) Logf(f string, args ...any) { t.logf(f, args...) }
func (t *cliTB) Fatalf(f string, args ...any) {
	panic(tbStop{fmt.Sprintf(f, args...)})
}
func (t *cliTB) Skipf(f string, args ...any) {
	panic(tbStop{"skipped: " + fmt.Sprintf(f, args...)})
}
func (t *cliTB) Errorf(f string, args ...any) {
	t.errors = append(t.errors, fmt.Sprintf(f, args...))
}
