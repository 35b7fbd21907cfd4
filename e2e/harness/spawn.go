package harness

import (
	"os/exec"
	"runtime"
	"sync"
)

// The kernel sends a child its Pdeathsig when the *thread* that forked it exits, not the
// process. Go threads do exit: creating a network namespace (nstest, testutils.NewNS) leaves its
// goroutine's thread locked, and that thread ends with the goroutine. A child forked from such a
// thread would be killed at a random moment. Every child of the harness is therefore forked from
// one thread that is locked for the life of the test binary and never exits.

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

// Start starts cmd from the harness's spawning thread (see above); use it instead of
// cmd.Start for every child that sets Pdeathsig.
func Start(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the process
			for req := range spawnCh {
				req.err <- req.cmd.Start()
			}
		}()
	})
	req := spawnReq{cmd: cmd, err: make(chan error, 1)}
	spawnCh <- req
	return <-req.err
}

// Run is Start followed by cmd.Wait.
func Run(cmd *exec.Cmd) error {
	if err := Start(cmd); err != nil {
		return err
	}
	return cmd.Wait()
}
