package sqlcore

import (
	"context"
	"database/sql"
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

// ErrNotPgx means the *sql.DB does not use the pgx driver, so the relay
// cannot LISTEN and polls.
var ErrNotPgx = errors.New("herald/sql: not a pgx connection")

// Listener holds a dedicated PostgreSQL session that LISTENs on some
// channels and turns each notification into a token on the wake channel
// of its channel. It runs on a connection of its own so that waiting for
// notifications never races the caller's queries, and its context is
// cancelled only when it is closed: the session is then discarded, never
// pooled.
type Listener struct {
	wake   map[string]chan struct{} // per channel, capacity 1: "it was notified"
	done   chan struct{}            // closed when the goroutine has returned
	cancel context.CancelFunc
}

// ErrNoListenConn means the pool had no connection to spare for LISTEN
// (SetMaxOpenConns too low): the relay polls instead of waiting for one.
var ErrNoListenConn = errors.New("herald/sql: no free connection for LISTEN in the *sql.DB pool")

// listenConnWait bounds the wait for the listener's connection.
const listenConnWait = 2 * time.Second

// Listen starts a listener on channels; the LISTENs have taken effect
// when it returns.
func Listen(ctx context.Context, db *sql.DB, channels ...string) (*Listener, error) {
	cctx, cancel := context.WithTimeout(ctx, listenConnWait)
	conn, err := db.Conn(cctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, ErrNoListenConn
		}
		return nil, err
	}
	isPgx := false
	if err := conn.Raw(func(dc any) error { _, isPgx = dc.(pgxConn); return nil }); err != nil {
		Discard(conn)
		return nil, err
	}
	if !isPgx {
		_ = conn.Close()
		return nil, ErrNotPgx
	}
	wake := make(map[string]chan struct{}, len(channels))
	for _, ch := range channels {
		if _, err := conn.ExecContext(ctx, "LISTEN "+Postgres.Quote(ch)); err != nil {
			Discard(conn)
			return nil, fmt.Errorf("LISTEN %s: %w", ch, err)
		}
		wake[ch] = make(chan struct{}, 1)
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &Listener{wake: wake, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(l.done)
		_ = conn.Raw(func(dc any) error {
			pc := dc.(pgxConn).Conn()
			for {
				n, err := pc.WaitForNotification(lctx)
				if err != nil {
					return driver.ErrBadConn // discard the session, LISTEN and all
				}
				select {
				case l.wake[n.Channel] <- struct{}{}:
				default:
				}
			}
		})
		_ = conn.Close()
	}()
	return l, nil
}

// Alive reports whether l still listens. A nil listener is not alive.
func (l *Listener) Alive() bool {
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

// Wake returns the wake channel of a channel Listen was given; nil (never
// ready) for a nil listener or another channel.
func (l *Listener) Wake(channel string) <-chan struct{} {
	if l == nil {
		return nil
	}
	return l.wake[channel]
}

// Close stops the listener and waits for its goroutine. Safe on nil.
func (l *Listener) Close() {
	if l == nil {
		return
	}
	l.cancel()
	<-l.done
}
