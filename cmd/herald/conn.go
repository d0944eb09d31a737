package main

import (
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	goredis "github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/heraldbus/herald/kafka/kafkadriver"
	"github.com/heraldbus/herald/redis/redisdriver"
	"github.com/heraldbus/herald/sql/outbox"
)

// tlsFlags are the TLS settings of one client.
type tlsFlags struct {
	Enabled    bool
	CA         string // PEM file of the CAs to trust (default: the system's)
	Cert, Key  string // PEM files of a client certificate
	ServerName string
	Insecure   bool // skip verification (testing only)
}

func (t *tlsFlags) register(f *flagSet, prefix, envPrefix string) {
	f.bool(&t.Enabled, prefix+"-tls", envPrefix+"_TLS", false, "connect with TLS")
	f.str(&t.CA, prefix+"-tls-ca", envPrefix+"_TLS_CA", "", "PEM file of the CA certificates to trust (default: the system's); implies -"+prefix+"-tls")
	f.str(&t.Cert, prefix+"-tls-cert", envPrefix+"_TLS_CERT", "", "PEM file of a client certificate (with -"+prefix+"-tls-key); implies -"+prefix+"-tls")
	f.str(&t.Key, prefix+"-tls-key", envPrefix+"_TLS_KEY", "", "PEM file of the client certificate's key")
	f.str(&t.ServerName, prefix+"-tls-server-name", envPrefix+"_TLS_SERVER_NAME", "", "server name to verify (default: the host of the address)")
	f.bool(&t.Insecure, prefix+"-tls-insecure-skip-verify", envPrefix+"_TLS_INSECURE_SKIP_VERIFY", false, "do not verify the server's certificate (for testing only)")
}

func (t tlsFlags) on() bool { return t.Enabled || t.CA != "" || t.Cert != "" }

func (t tlsFlags) validate(prefix string) []error {
	var errs []error
	if (t.Cert == "") != (t.Key == "") {
		errs = append(errs, fmt.Errorf("-%s-tls-cert and -%s-tls-key go together", prefix, prefix))
	}
	for _, file := range []string{t.CA, t.Cert, t.Key} {
		if file == "" {
			continue
		}
		if _, err := os.Stat(file); err != nil {
			errs = append(errs, fmt.Errorf("-%s-tls-*: %w", prefix, err))
		}
	}
	return errs
}

// config returns the TLS configuration, or nil when TLS is off.
func (t tlsFlags) config() (*tls.Config, error) {
	if !t.on() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.Insecure} //nolint:gosec // an explicit flag
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate in it", t.CA)
		}
		c.RootCAs = pool
	}
	if t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// kafkaFlags connect to a Kafka cluster.
type kafkaFlags struct {
	Brokers      string // comma-separated host:port list
	ClientID     string
	AutoCreate   bool
	TLS          tlsFlags
	SASL         string // plain, scram-sha-256, scram-sha-512
	SASLUser     string
	SASLPassword string
}

func (k *kafkaFlags) register(f *flagSet, clientID string, autoCreate bool) {
	f.str(&k.Brokers, "kafka-brokers", "HERALD_KAFKA_BROKERS", "", "comma-separated Kafka bootstrap brokers, host:port")
	f.str(&k.ClientID, "kafka-client-id", "HERALD_KAFKA_CLIENT_ID", clientID, "Kafka client id")
	if autoCreate {
		f.bool(&k.AutoCreate, "kafka-auto-create-topics", "HERALD_KAFKA_AUTO_CREATE_TOPICS", false, "let the brokers create missing topics")
	}
	k.TLS.register(f, "kafka", "HERALD_KAFKA")
	f.str(&k.SASL, "kafka-sasl", "HERALD_KAFKA_SASL", "", "SASL mechanism: plain, scram-sha-256 or scram-sha-512 (use it with TLS)")
	f.str(&k.SASLUser, "kafka-sasl-user", "HERALD_KAFKA_SASL_USER", "", "SASL user name")
	f.str(&k.SASLPassword, "kafka-sasl-password", "HERALD_KAFKA_SASL_PASSWORD", "", "SASL password (prefer the environment variable)")
}

func (k kafkaFlags) brokers() []string {
	var list []string
	for _, b := range strings.Split(k.Brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			list = append(list, b)
		}
	}
	return list
}

// validate checks the flags; the broker list only when it is set.
func (k kafkaFlags) validate() []error {
	var errs []error
	for _, b := range strings.Split(k.Brokers, ",") {
		if k.Brokers == "" {
			break
		}
		if err := checkHostPort(strings.TrimSpace(b)); err != nil {
			errs = append(errs, fmt.Errorf("-kafka-brokers %q: broker %q: %w", k.Brokers, b, err))
		}
	}
	switch k.SASL {
	case "":
		if k.SASLUser != "" || k.SASLPassword != "" {
			errs = append(errs, errors.New("-kafka-sasl-user and -kafka-sasl-password need -kafka-sasl"))
		}
	case "plain", "scram-sha-256", "scram-sha-512":
		if k.SASLUser == "" {
			errs = append(errs, fmt.Errorf("-kafka-sasl %s needs -kafka-sasl-user", k.SASL))
		}
	default:
		errs = append(errs, fmt.Errorf("-kafka-sasl %q: want plain, scram-sha-256 or scram-sha-512", k.SASL))
	}
	return append(errs, k.TLS.validate("kafka")...)
}

// open returns a Kafka driver; it contacts nothing yet. The caller closes
// it.
func (k kafkaFlags) open(logger *slog.Logger, opts ...kafkadriver.Option) (*kafkadriver.Driver, error) {
	opts = append([]kafkadriver.Option{kafkadriver.WithClientID(k.ClientID), kafkadriver.WithLogger(logger)}, opts...)
	if k.AutoCreate {
		opts = append(opts, kafkadriver.WithAutoCreateTopics())
	}
	tc, err := k.TLS.config()
	if err != nil {
		return nil, fmt.Errorf("kafka TLS: %w", err)
	}
	if tc != nil {
		opts = append(opts, kafkadriver.WithTLS(tc))
	}
	switch k.SASL {
	case "plain":
		opts = append(opts, kafkadriver.WithSASLPlain(k.SASLUser, k.SASLPassword))
	case "scram-sha-256":
		opts = append(opts, kafkadriver.WithSASLSCRAM(kafkadriver.SCRAMSHA256, k.SASLUser, k.SASLPassword))
	case "scram-sha-512":
		opts = append(opts, kafkadriver.WithSASLSCRAM(kafkadriver.SCRAMSHA512, k.SASLUser, k.SASLPassword))
	}
	return kafkadriver.New(k.brokers(), opts...)
}

// redisFlags connect to a Redis server.
type redisFlags struct {
	Addr      string
	Username  string
	Password  string
	DB        int
	KeyPrefix string
	TLS       tlsFlags
}

func (r *redisFlags) register(f *flagSet) {
	f.str(&r.Addr, "redis-addr", "HERALD_REDIS_ADDR", "", "Redis address, host:port")
	f.str(&r.Username, "redis-username", "HERALD_REDIS_USERNAME", "", "Redis ACL user name (default: the default user)")
	f.str(&r.Password, "redis-password", "HERALD_REDIS_PASSWORD", "", "Redis password (prefer the environment variable)")
	f.int(&r.DB, "redis-db", "HERALD_REDIS_DB", 0, "Redis database number")
	f.str(&r.KeyPrefix, "redis-key-prefix", "HERALD_REDIS_KEY_PREFIX", redisdriver.DefaultKeyPrefix, "prefix of the Redis stream keys")
	r.TLS.register(f, "redis", "HERALD_REDIS")
}

// validate checks the flags; the address only when it is set.
func (r redisFlags) validate() []error {
	var errs []error
	if err := checkHostPort(r.Addr); r.Addr != "" && err != nil {
		errs = append(errs, fmt.Errorf("-redis-addr %q: %w", r.Addr, err))
	}
	if r.DB < 0 {
		errs = append(errs, fmt.Errorf("-redis-db %d: want 0 or more", r.DB))
	}
	return append(errs, r.TLS.validate("redis")...)
}

// open returns a Redis driver and the function that closes it and its
// client; it contacts nothing yet.
func (r redisFlags) open() (*redisdriver.Driver, func() error, error) {
	tc, err := r.TLS.config()
	if err != nil {
		return nil, nil, fmt.Errorf("redis TLS: %w", err)
	}
	client := goredis.NewClient(&goredis.Options{Addr: r.Addr, Username: r.Username, Password: r.Password, DB: r.DB, TLSConfig: tc})
	d, err := redisdriver.New(client, redisdriver.WithKeyPrefix(r.KeyPrefix))
	if err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	return d, func() error { return errors.Join(d.Close(), client.Close()) }, nil
}

// dbFlags name a table in a database: an outbox (-dsn, -dialect, -table)
// or the log of the SQL driver (-sql-dsn, -sql-dialect, -sql-table).
type dbFlags struct {
	DSN     string
	Dialect string // empty: inferred from DSN
	Table   string
	prefix  string // of the flag names: "" or "sql-"
}

// register registers the outbox's flags.
func (d *dbFlags) register(f *flagSet) {
	d.registerAs(f, "", "HERALD_OUTBOX_", "the outbox", outbox.DefaultTable)
}

// registerAs registers the flags -<prefix>dsn, -<prefix>dialect and
// -<prefix>table with the variables <env>DSN, <env>DIALECT and <env>TABLE,
// for the tables of what.
func (d *dbFlags) registerAs(f *flagSet, prefix, env, what, table string) {
	d.prefix = prefix
	f.str(&d.DSN, prefix+"dsn", env+"DSN", "", "database of "+what+": postgres://..., user:pass@tcp(host:port)/db?parseTime=true, or file:path.db")
	f.str(&d.Dialect, prefix+"dialect", env+"DIALECT", "", "postgres, mysql or sqlite (default: inferred from -"+prefix+"dsn)")
	f.str(&d.Table, prefix+"table", env+"TABLE", table, "table of "+what)
}

// resolve fills the dialect in from the DSN when it is not set.
func (d *dbFlags) resolve() {
	if d.Dialect == "" {
		d.Dialect = inferDialect(d.DSN)
	}
}

// validate checks the flags; dsn says whether the DSN is required.
func (d dbFlags) validate(dsn bool) []error {
	var errs []error
	if dsn && d.DSN == "" {
		errs = append(errs, fmt.Errorf("-%sdsn is required", d.prefix))
	}
	if d.Dialect == "" {
		if d.DSN != "" || !dsn {
			errs = append(errs, fmt.Errorf("cannot infer the dialect from -%sdsn: set -%sdialect", d.prefix, d.prefix))
		}
	} else if _, err := outbox.ParseDialect(d.Dialect); err != nil {
		errs = append(errs, fmt.Errorf("-%sdialect: %w", d.prefix, err))
	}
	if err := outbox.ValidateTable(d.Table); err != nil {
		errs = append(errs, fmt.Errorf("-%stable: %w", d.prefix, err))
	}
	return errs
}

func (d dbFlags) dialect() outbox.Dialect {
	dialect, _ := outbox.ParseDialect(d.Dialect)
	return dialect
}

// open opens the database; it does not connect yet. The caller closes it.
func (d dbFlags) open() (*sql.DB, error) {
	driver := "sqlite"
	switch d.dialect() {
	case outbox.Postgres:
		driver = "pgx"
	case outbox.MySQL:
		driver = "mysql"
	}
	return sql.Open(driver, d.DSN)
}

// inferDialect guesses the dialect from the shape of a DSN; "" when it
// cannot tell.
func inferDialect(dsn string) string {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return outbox.Postgres.String()
	case strings.Contains(dsn, "@tcp("), strings.Contains(dsn, "@unix("):
		return outbox.MySQL.String()
	case strings.HasPrefix(dsn, "file:"), strings.HasSuffix(dsn, ".db"), strings.HasSuffix(dsn, ".sqlite"), strings.HasSuffix(dsn, ".sqlite3"):
		return outbox.SQLite.String()
	}
	return ""
}

// checkHostPort checks a host:port address with a port number.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
		return errors.New("want host:port with a port from 1 to 65535")
	}
	return nil
}
