// Package testenv gives tests the addresses of the real servers they talk
// to, and one rule for a server that is not there: skip with a one-line
// reason on a developer machine, fail under CI (CI=true, CI=1, ...).
package testenv

import (
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Defaults for the servers on a development machine.
const (
	DefaultRedisAddr   = "127.0.0.1:6379"
	DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultMySQLDSN    = "root@tcp(127.0.0.1:3306)/test?parseTime=true&multiStatements=true"
	DefaultNATSURL     = "nats://127.0.0.1:4222"
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
)

// CI reports whether the tests run under CI, where a missing server is a
// failure, never a skip: CI is set to anything but a false value
// (CI=true, CI=1, CI=yes; not CI=false, CI=0 or empty).
func CI() bool {
	v := strings.TrimSpace(os.Getenv("CI"))
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	return err != nil || b
}

// Unavailable skips the test with reason, or fails it under CI.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if CI() {
		t.Fatalf("required server unavailable under CI=true: %s", reason)
	}
	t.Skip(reason)
}

// Getenv returns the environment variable name, or def when it is unset.
func Getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// RedisAddr returns HERALD_REDIS_ADDR (default 127.0.0.1:6379) after
// checking that something listens there.
func RedisAddr(t testing.TB) string {
	t.Helper()
	addr := Getenv("HERALD_REDIS_ADDR", DefaultRedisAddr)
	requireTCP(t, "redis", addr)
	return addr
}

// PostgresDSN returns HERALD_POSTGRES_DSN after checking that the server's
// port answers.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := Getenv("HERALD_POSTGRES_DSN", DefaultPostgresDSN)
	requireTCP(t, "postgres", hostPort(dsn, "127.0.0.1:5432"))
	return dsn
}

// MySQLDSN returns HERALD_MYSQL_DSN after checking that the server's port
// answers.
func MySQLDSN(t testing.TB) string {
	t.Helper()
	dsn := Getenv("HERALD_MYSQL_DSN", DefaultMySQLDSN)
	requireTCP(t, "mysql", hostPort(dsn, "127.0.0.1:3306"))
	return dsn
}

// NATSURL returns HERALD_NATS_URL (default nats://127.0.0.1:4222) after
// checking that something listens there.
func NATSURL(t testing.TB) string {
	t.Helper()
	u := Getenv("HERALD_NATS_URL", DefaultNATSURL)
	requireTCP(t, "nats", urlHost(u, "4222"))
	return u
}

// AMQPURL returns HERALD_AMQP_URL (default
// amqp://guest:guest@127.0.0.1:5672/) after checking that something
// listens there.
func AMQPURL(t testing.TB) string {
	t.Helper()
	u := Getenv("HERALD_AMQP_URL", DefaultAMQPURL)
	requireTCP(t, "rabbitmq", urlHost(u, "5672"))
	return u
}

// urlHost is the host:port of the first URL in a comma-separated list,
// with port when the URL has none.
func urlHost(list, port string) string {
	first, _, _ := strings.Cut(list, ",")
	u, err := url.Parse(first)
	if err != nil || u.Host == "" {
		return first
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), port)
	}
	return u.Host
}

// KafkaBrokers returns HERALD_KAFKA_BROKERS split on commas, or nil when it
// is unset (tests then start an in-process kfake cluster).
func KafkaBrokers() []string {
	v := os.Getenv("HERALD_KAFKA_BROKERS")
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

func requireTCP(t testing.TB, name, addr string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		Unavailable(t, name+" not reachable at "+addr+": "+err.Error())
		return
	}
	_ = conn.Close()
}

// hostPort digs host:port out of a URL-style DSN ("postgres://u@h:p/db") or
// a go-sql-driver DSN ("u@tcp(h:p)/db"); it returns def when it finds none.
func hostPort(dsn, def string) string {
	if i := strings.Index(dsn, "tcp("); i >= 0 {
		rest := dsn[i+4:]
		if j := strings.IndexByte(rest, ')'); j > 0 {
			return rest[:j]
		}
	}
	if i := strings.Index(dsn, "@"); i >= 0 {
		rest := dsn[i+1:]
		if j := strings.IndexAny(rest, "/?"); j >= 0 {
			rest = rest[:j]
		}
		if rest != "" {
			if !strings.Contains(rest, ":") {
				rest += ":" + def[strings.LastIndexByte(def, ':')+1:]
			}
			return rest
		}
	}
	return def
}
