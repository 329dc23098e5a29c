package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/backend"
)

// requestTimeout bounds how long a caller may take to send its request.
const requestTimeout = 5 * time.Second

// serve accepts connections until the listener is closed and queues each
// request for the main loop. It returns once every connection it took
// has been handled: those still open then are closed, and their callers,
// who see the connection break, do the work themselves.
func (a *Agent) serve(ctx context.Context, ln *net.UnixListener, reqs chan<- pending) {
	var handlers sync.WaitGroup
	var mu sync.Mutex
	open := map[*net.UnixConn]bool{}
	defer func() {
		mu.Lock()
		for c := range open {
			c.Close() // a caller still sending or reading is not waited for
		}
		mu.Unlock()
		handlers.Wait()
	}()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			a.Log.Warn("accepting a connection", "error", err)
			continue
		}
		mu.Lock()
		open[conn] = true
		mu.Unlock()
		handlers.Go(func() {
			a.handle(ctx, conn, reqs)
			mu.Lock()
			delete(open, conn)
			mu.Unlock()
		})
	}
}

// handle reads one request, waits for the batch it joins and answers.
func (a *Agent) handle(ctx context.Context, conn *net.UnixConn, reqs chan<- pending) {
	defer conn.Close()
	answer := func(r Response) {
		line, _ := json.Marshal(r)
		conn.SetWriteDeadline(time.Now().Add(requestTimeout))
		conn.Write(append(line, '\n'))
	}
	if err := wire.CheckPeer(conn); err != nil {
		answer(Response{Error: "refused: " + err.Error(), Refused: true})
		return
	}
	conn.SetReadDeadline(time.Now().Add(requestTimeout))
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		answer(Response{Error: "malformed request: " + err.Error()})
		return
	}
	switch {
	case req.Op == Ifup || req.Op == Ifdown:
		if req.Tap == "" {
			answer(Response{Error: "malformed request: " + string(req.Op) + " without a tap"})
			return
		}
	case a.Jobs[req.Op] == nil:
		// An agent of another version may not know an operation a
		// newer caller sends: the caller does it itself.
		answer(Response{Error: "the agent does not run " + strconv.Quote(string(req.Op)), Refused: true})
		return
	}
	if req.ConfigDir != a.ConfigDir {
		answer(Response{Error: "the agent serves configuration directory " + a.ConfigDir + ", not " + req.ConfigDir, Refused: true})
		return
	}
	if req.StateDir != "" && a.StateDir != "" && req.StateDir != a.StateDir {
		answer(Response{Error: "the agent keeps attachment records in " + a.StateDir + ", not " + req.StateDir, Refused: true})
		return
	}
	if be := a.Kernel.Backend; req.Backend != "" && backend.Name(req.Backend) != be.Name() {
		answer(Response{Error: "the agent uses backend " + string(be.Name()) + " (" + be.Describe() + "), not " + req.Backend, Refused: true})
		return
	} else if req.IPTables != "" && (be.Name() != backend.IPTables || be.Flavour() != req.IPTables) && (req.Backend == "" || be.Name() == backend.IPTables) {
		answer(Response{Error: "the agent uses backend " + string(be.Name()) + " (" + be.Describe() + "), not iptables " + req.IPTables, Refused: true})
		return
	}
	p := pending{req: req, reply: make(chan Response, 1)}
	select {
	case reqs <- p:
	case <-ctx.Done():
		return // the caller sees the connection close and does the work itself
	}
	select {
	case r := <-p.reply:
		answer(r)
	case <-ctx.Done():
	}
}
