package outbox

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgxConn is what the pgx database/sql driver's connections
// (*stdlib.Conn) offer: the native connection underneath. Matching the
// method rather than the type keeps this package free of the stdlib
// package and its pool dependencies.
type pgxConn interface{ Conn() *pgx.Conn }

// errNotPgx means the *sql.DB does not use the pgx driver, so the relay
// cannot LISTEN and polls.
var errNotPgx = errors.New("outbox: not a pgx connection")

// listener holds a dedicated PostgreSQL session that LISTENs on the
// table's channel and turns each notification into a token on wake. It
// runs on a connection of its own so that waiting for notifications never
// races the relay's queries, and its context is cancelled only when it is
// closed: the session is then discarded, never pooled.
type listener struct {
	wake   chan struct{} // capacity 1: "rows were committed"
	done   chan struct{} // closed when the goroutine has returned
	cancel context.CancelFunc
}

// errNoListenConn means the pool had no connection to spare for LISTEN
// (SetMaxOpenConns too low): the relay polls instead of waiting for one.
var errNoListenConn = errors.New("outbox: no free connection for LISTEN in the *sql.DB pool")

// listenConnWait bounds the wait for the listener's connection.
const listenConnWait = 2 * time.Second

// listen starts a listener; the LISTEN has taken effect when it returns.
func (r *Relay) listen(ctx context.Context) (*listener, error) {
	cctx, cancel := context.WithTimeout(ctx, listenConnWait)
	conn, err := r.db.Conn(cctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, errNoListenConn
		}
		return nil, err
	}
	isPgx := false
	if err := conn.Raw(func(dc any) error { _, isPgx = dc.(pgxConn); return nil }); err != nil {
		discard(conn)
		return nil, err
	}
	if !isPgx {
		_ = conn.Close()
		return nil, errNotPgx
	}
	if _, err := conn.ExecContext(ctx, "LISTEN "+Postgres.quote(r.t.channel)); err != nil {
		discard(conn)
		return nil, fmt.Errorf("LISTEN %s: %w", r.t.channel, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &listener{wake: make(chan struct{}, 1), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(l.done)
		_ = conn.Raw(func(dc any) error {
			pc := dc.(pgxConn).Conn()
			for {
				if _, err := pc.WaitForNotification(lctx); err != nil {
					return driver.ErrBadConn // discard the session, LISTEN and all
				}
				select {
				case l.wake <- struct{}{}:
				default:
				}
			}
		})
		_ = conn.Close()
	}()
	return l, nil
}

// alive reports whether l still listens. A nil listener is not alive.
func (l *listener) alive() bool {
	if l == nil {
		return false
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// wakeC returns the wake channel; nil (never ready) for a nil listener.
func (l *listener) wakeC() <-chan struct{} {
	if l == nil {
		return nil
	}
	return l.wake
}

// close stops the listener and waits for its goroutine. Safe on nil.
func (l *listener) close() {
	if l == nil {
		return
	}
	l.cancel()
	<-l.done
}
