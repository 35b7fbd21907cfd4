package ec2gw

import "time"

// clock is the limiter's time source; tests inject a manual one.
type clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d, unless stopped first.
	AfterFunc(d time.Duration, f func()) stopper
}

// stopper stops a timer made by clock.AfterFunc.
type stopper interface {
	Stop() bool
}

type realClock struct{}

var _ clock = realClock{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }
