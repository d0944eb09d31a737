package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// The idle rows count what a subscriber asks of its database by wrapping
// the database/sql connector of its pool: every statement the pool sends
// (Exec, Query, BEGIN, COMMIT, ROLLBACK, Ping, and the executions of
// prepared statements) adds one. It counts on the client, so it sees only
// the pool it wraps: another process on the same server, or another
// member's pool, is not in the figure, which pg_stat_statements or
// pg_stat_database (server-wide, and the first not loaded on every
// server) could not say as precisely.

// openCounted opens a pool like sql.Open(driverName, dsn) whose statements
// add to the returned counter.
func openCounted(driverName, dsn string) (*sql.DB, *atomic.Int64, error) {
	probe, err := sql.Open(driverName, dsn)
	if err != nil {
		return nil, nil, err
	}
	drv := probe.Driver()
	if err := probe.Close(); err != nil {
		return nil, nil, err
	}
	var inner driver.Connector = dsnConnector{drv: drv, dsn: dsn}
	if dc, ok := drv.(driver.DriverContext); ok {
		if inner, err = dc.OpenConnector(dsn); err != nil {
			return nil, nil, err
		}
	}
	n := new(atomic.Int64)
	return sql.OpenDB(countingConnector{inner: inner, n: n}), n, nil
}

// dsnConnector is the connector of a driver without one of its own.
type dsnConnector struct {
	drv driver.Driver
	dsn string
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.drv }

// countingConnector hands out connections that count their statements in n.
type countingConnector struct {
	inner driver.Connector
	n     *atomic.Int64
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	cc := &countingConn{inner: conn, n: c.n}
	if _, ok := conn.(pgxConner); ok {
		// herald's LISTEN session reaches for the pgx connection under
		// database/sql (conn.Raw); the wrapper must not hide it.
		return countingPgxConn{cc}, nil
	}
	return cc, nil
}

func (c countingConnector) Driver() driver.Driver { return c.inner.Driver() }

// pgxConner is what pgx's database/sql connections offer besides the
// driver interfaces: the native connection.
type pgxConner interface{ Conn() *pgx.Conn }

// countingPgxConn is a counting pgx connection that still offers the
// native one (waiting for notifications on it sends no statement).
type countingPgxConn struct{ *countingConn }

func (c countingPgxConn) Conn() *pgx.Conn { return c.inner.(pgxConner).Conn() }

// countingConn forwards every optional interface database/sql looks for
// to the connection it wraps, counting the statements.
type countingConn struct {
	inner driver.Conn
	n     *atomic.Int64
}

var (
	_ driver.ExecerContext      = (*countingConn)(nil)
	_ driver.QueryerContext     = (*countingConn)(nil)
	_ driver.ConnBeginTx        = (*countingConn)(nil)
	_ driver.ConnPrepareContext = (*countingConn)(nil)
	_ driver.Pinger             = (*countingConn)(nil)
	_ driver.SessionResetter    = (*countingConn)(nil)
	_ driver.Validator          = (*countingConn)(nil)
	_ driver.NamedValueChecker  = (*countingConn)(nil)
)

func (c *countingConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	var (
		st  driver.Stmt
		err error
	)
	if p, ok := c.inner.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, query)
	} else {
		st, err = c.inner.Prepare(query)
	}
	if err != nil {
		return nil, err
	}
	return &countingStmt{inner: st, n: c.n}, nil
}

func (c *countingConn) Close() error { return c.inner.Close() }

func (c *countingConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	var (
		tx  driver.Tx
		err error
	)
	if b, ok := c.inner.(driver.ConnBeginTx); ok {
		tx, err = b.BeginTx(ctx, opts)
	} else {
		if opts.Isolation != driver.IsolationLevel(sql.LevelDefault) || opts.ReadOnly {
			return nil, errors.New("bench: the wrapped driver takes no transaction options")
		}
		//lint:ignore SA1019 the fallback database/sql itself uses for drivers without BeginTx
		tx, err = c.inner.Begin()
	}
	c.n.Add(1)
	if err != nil {
		return nil, err
	}
	return countingTx{inner: tx, n: c.n}, nil
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.inner.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip // database/sql prepares instead: the statement counts there
	}
	res, err := e.ExecContext(ctx, query, args)
	if !errors.Is(err, driver.ErrSkip) {
		c.n.Add(1)
	}
	return res, err
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := c.inner.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	rows, err := q.QueryContext(ctx, query, args)
	if !errors.Is(err, driver.ErrSkip) {
		c.n.Add(1)
	}
	return rows, err
}

func (c *countingConn) Ping(ctx context.Context) error {
	p, ok := c.inner.(driver.Pinger)
	if !ok {
		return nil
	}
	c.n.Add(1)
	return p.Ping(ctx)
}

func (c *countingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *countingConn) IsValid() bool {
	if v, ok := c.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	if ch, ok := c.inner.(driver.NamedValueChecker); ok {
		return ch.CheckNamedValue(nv)
	}
	return driver.ErrSkip // the default conversion
}

// countingTx counts COMMIT and ROLLBACK.
type countingTx struct {
	inner driver.Tx
	n     *atomic.Int64
}

func (t countingTx) Commit() error   { t.n.Add(1); return t.inner.Commit() }
func (t countingTx) Rollback() error { t.n.Add(1); return t.inner.Rollback() }

// countingStmt counts the executions of a prepared statement.
type countingStmt struct {
	inner driver.Stmt
	n     *atomic.Int64
}

var (
	_ driver.StmtExecContext  = (*countingStmt)(nil)
	_ driver.StmtQueryContext = (*countingStmt)(nil)
)

func (s *countingStmt) Close() error  { return s.inner.Close() }
func (s *countingStmt) NumInput() int { return s.inner.NumInput() }

func (s *countingStmt) Exec(args []driver.Value) (driver.Result, error) {
	s.n.Add(1)
	//lint:ignore SA1019 forwarding the legacy method to the legacy method
	return s.inner.Exec(args)
}

func (s *countingStmt) Query(args []driver.Value) (driver.Rows, error) {
	s.n.Add(1)
	//lint:ignore SA1019 forwarding the legacy method to the legacy method
	return s.inner.Query(args)
}

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := s.inner.(driver.StmtExecContext); ok {
		s.n.Add(1)
		return e.ExecContext(ctx, args)
	}
	vs, err := plainValues(args)
	if err != nil {
		return nil, err
	}
	return s.Exec(vs)
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := s.inner.(driver.StmtQueryContext); ok {
		s.n.Add(1)
		return q.QueryContext(ctx, args)
	}
	vs, err := plainValues(args)
	if err != nil {
		return nil, err
	}
	return s.Query(vs)
}

func (s *countingStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if ch, ok := s.inner.(driver.NamedValueChecker); ok {
		return ch.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// plainValues is what database/sql does for a statement without the
// context methods: positional values only.
func plainValues(args []driver.NamedValue) ([]driver.Value, error) {
	vs := make([]driver.Value, len(args))
	for i, a := range args {
		if a.Name != "" {
			return nil, fmt.Errorf("bench: named argument %q for a driver without named arguments", a.Name)
		}
		vs[i] = a.Value
	}
	return vs, nil
}
