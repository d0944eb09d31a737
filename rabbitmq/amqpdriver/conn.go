package amqpdriver

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
)

// DialFunc opens a new connection to the broker. The driver calls it
// whenever it needs a connection (at first use, and after one was lost),
// and owns what it returns: it closes the connection on Close or when it
// gives it up. ctx bounds the dial.
type DialFunc func(ctx context.Context) (*amqp.Connection, error)

// dialTimeout bounds a dial and the AMQP handshake when ctx has no
// earlier deadline.
const dialTimeout = 30 * time.Second

// URLDialer returns the DialFunc New uses for url: amqp091's
// DialConfig with config (its Dial field replaced by one that honours
// ctx), so TLS, SASL, the virtual host and the heartbeat come from url and
// config as amqp091 documents them.
func URLDialer(url string, config amqp.Config) DialFunc {
	return func(ctx context.Context) (*amqp.Connection, error) {
		var mu sync.Mutex
		var raw net.Conn
		cfg := config
		cfg.Dial = func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The handshake has no context in amqp091; a deadline bounds
			// it, and amqp091 clears the deadline once it is done.
			deadline := time.Now().Add(dialTimeout)
			if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
				deadline = d
			}
			if err := c.SetDeadline(deadline); err != nil {
				_ = c.Close()
				return nil, err
			}
			mu.Lock()
			raw = c
			mu.Unlock()
			return c, nil
		}
		stop := context.AfterFunc(ctx, func() {
			mu.Lock()
			defer mu.Unlock()
			if raw != nil {
				_ = raw.SetDeadline(time.Unix(1, 0))
			}
		})
		conn, err := amqp.DialConfig(url, cfg)
		if !stop() && err == nil {
			// ctx ended during the handshake: the connection may carry the
			// expired deadline.
			_ = conn.Close()
			return nil, ctx.Err()
		}
		return conn, err
	}
}

// connector keeps one connection open: it dials on first use and again
// after the connection was lost, waiting the reconnect backoff between
// failed attempts. It is safe for concurrent use.
type connector struct {
	dial DialFunc
	// sem (capacity 1) guards everything below; a channel, so that a
	// caller waiting for a dial in progress can give up when its ctx ends.
	sem    chan struct{}
	conn   *amqp.Connection
	wait   backoff.Backoff
	failed bool // the last dial failed: wait before the next
	closed bool
}

func newConnector(dial DialFunc, cfg config) *connector {
	return &connector{dial: dial, sem: make(chan struct{}, 1), wait: backoff.New(cfg.reconnectMin, cfg.reconnectMax)}
}

func (c *connector) lock(ctx context.Context) error {
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *connector) unlock() { <-c.sem }

// connection returns the open connection, dialling one when there is
// none or it was closed.
func (c *connector) connection(ctx context.Context) (*amqp.Connection, error) {
	if err := c.lock(ctx); err != nil {
		return nil, err
	}
	defer c.unlock()
	if c.closed {
		return nil, herald.ErrClosed
	}
	if c.conn != nil && !c.conn.IsClosed() {
		return c.conn, nil
	}
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn = nil
		c.failed = true // lost: back off before dialling again
	}
	if c.failed && !backoff.Sleep(ctx, c.wait.Next()) {
		return nil, ctx.Err()
	}
	conn, err := c.dial(ctx)
	if err == nil && conn == nil {
		err = errors.New("dial returned no connection")
	}
	if err != nil {
		c.failed = true
		return nil, err
	}
	c.failed = false
	c.wait.Reset()
	c.conn = conn
	return conn, nil
}

// channel opens a channel on the connection, dialling first when needed.
func (c *connector) channel(ctx context.Context) (*amqp.Channel, error) {
	conn, err := c.connection(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	return ch, nil
}

// close closes the connection and makes later calls fail with
// herald.ErrClosed. It waits for a dial in progress.
func (c *connector) close() error {
	c.sem <- struct{}{}
	defer c.unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}
