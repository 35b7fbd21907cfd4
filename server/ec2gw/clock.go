package ec2gw

import "github.com/ipledger/ipledger/internal/clock"

// realClock is the clock of a gateway whose Config names none.
func realClock() clock.Clock { return clock.Real() }
