package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/nats/natsdriver"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// Broker kinds a command connects to.
const (
	targetKafka    = "kafka"
	targetRedis    = "redis"
	targetNATS     = "nats"
	targetRabbitMQ = "rabbitmq"
	targetMemory   = "memory" // herald relay only: drops what it is given
	targetSQL      = "sql"    // the SQL driver's log (herald dlq only)
)

// The brokers every command that talks to one takes, for its messages.
const (
	brokerKinds = "kafka, redis, nats, rabbitmq"
	brokerAddrs = "-kafka-brokers, -redis-addr, -nats-url or -amqp-url"
)

// brokerFlags are the connection flags of the brokers "herald relay"
// writes to and "herald dlq" works on, and the one place that picks among
// them.
type brokerFlags struct {
	Kafka kafkaFlags
	Redis redisFlags
	NATS  natsFlags
	AMQP  amqpFlags
}

// registerBrokers registers every broker's flags; clientID names the command to
// the brokers, autoCreate offers Kafka's topic auto-creation.
func (b *brokerFlags) registerBrokers(f *flagSet, clientID string, autoCreate bool) {
	b.Kafka.register(f, clientID, autoCreate)
	b.Redis.register(f)
	b.NATS.register(f, clientID)
	b.AMQP.register(f, clientID)
}

// inferBroker sets *kind, when empty, to the broker whose address is given
// (Kafka first, then Redis, NATS, RabbitMQ).
func (b brokerFlags) inferBroker(kind *string) {
	switch {
	case *kind != "":
	case b.Kafka.Brokers != "":
		*kind = targetKafka
	case b.Redis.Addr != "":
		*kind = targetRedis
	case b.NATS.URL != "":
		*kind = targetNATS
	case b.AMQP.URL != "":
		*kind = targetRabbitMQ
	}
}

// flagProblems checks every broker's flags that are set.
func (b brokerFlags) flagProblems() []error {
	errs := append(b.Kafka.validate(), b.Redis.validate()...)
	errs = append(errs, b.NATS.validate()...)
	return append(errs, b.AMQP.validate()...)
}

// kindProblems checks that the broker kind, given by flag, has its
// address; known is false when kind names no broker.
func (b brokerFlags) kindProblems(flag, kind string) (errs []error, known bool) {
	need := func(addr, addrFlag string) []error {
		if addr == "" {
			return []error{fmt.Errorf("%s %s needs %s", flag, kind, addrFlag)}
		}
		return nil
	}
	switch kind {
	case targetKafka:
		return need(b.Kafka.Brokers, "-kafka-brokers"), true
	case targetRedis:
		return need(b.Redis.Addr, "-redis-addr"), true
	case targetNATS:
		return need(b.NATS.URL, "-nats-url"), true
	case targetRabbitMQ:
		return need(b.AMQP.URL, "-amqp-url"), true
	}
	return nil, false
}

// broker is an opened broker: its driver as the writer, its dead-letter
// store, and what closes both.
type broker struct {
	writer      herald.Writer
	deadLetters dlq.Store
	close       func() error
}

// openBroker connects to the broker kind, one of the brokers. An option
// the driver refuses is an error that wraps herald.ErrInvalidOption.
func (b brokerFlags) openBroker(kind string, logger *slog.Logger) (broker, error) {
	switch kind {
	case targetKafka:
		d, err := b.Kafka.open(logger)
		if err != nil {
			return broker{}, err
		}
		return broker{writer: d, deadLetters: d.DeadLetters(), close: d.Close}, nil
	case targetRedis:
		d, closeRedis, err := b.Redis.open()
		if err != nil {
			return broker{}, err
		}
		return broker{writer: d, deadLetters: d.DeadLetters(), close: closeRedis}, nil
	case targetNATS:
		return b.NATS.open(logger)
	case targetRabbitMQ:
		return b.AMQP.open()
	}
	return broker{}, fmt.Errorf("no broker %q", kind)
}

// natsFlags connect to NATS JetStream.
type natsFlags struct {
	URL           string // comma-separated server URLs
	Creds         string // credentials file (JWT and NKey seed)
	TLS           tlsFlags
	StreamPrefix  string
	SubjectPrefix string
	clientName    string
}

func (n *natsFlags) register(f *flagSet, clientName string) {
	n.clientName = clientName
	f.str(&n.URL, "nats-url", "HERALD_NATS_URL", "", "comma-separated NATS server URLs, nats://host:4222 (JetStream on)")
	f.str(&n.Creds, "nats-creds", "HERALD_NATS_CREDS", "", "NATS credentials file (user JWT and NKey seed)")
	n.TLS.register(f, "nats", "HERALD_NATS")
	f.str(&n.StreamPrefix, "nats-stream-prefix", "HERALD_NATS_STREAM_PREFIX", natsdriver.DefaultStreamPrefix,
		"prefix of the stream names (the services' natsdriver.WithStreamPrefix)")
	f.str(&n.SubjectPrefix, "nats-subject-prefix", "HERALD_NATS_SUBJECT_PREFIX", natsdriver.DefaultSubjectPrefix,
		"subject tokens before the topic (the services' natsdriver.WithSubjectPrefix)")
}

// validate checks the flags; the URLs only when they are set.
func (n natsFlags) validate() []error {
	var errs []error
	for _, s := range strings.Split(n.URL, ",") {
		if n.URL == "" {
			break
		}
		if err := checkURL(strings.TrimSpace(s), "nats", "tls", "ws", "wss"); err != nil {
			errs = append(errs, fmt.Errorf("-nats-url %s: %w", redactURL(n.URL), err))
		}
	}
	if n.Creds != "" {
		if _, err := os.Stat(n.Creds); err != nil {
			errs = append(errs, fmt.Errorf("-nats-creds: %w", err))
		}
	}
	return append(errs, n.TLS.validate("nats")...)
}

// open connects to NATS (reconnecting for as long as the command runs)
// and returns a driver on it.
func (n natsFlags) open(logger *slog.Logger) (broker, error) {
	opts := []nats.Option{
		nats.Name(n.clientName), nats.Timeout(10 * time.Second), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: closed by the command itself
				logger.Warn("nats: disconnected", slog.Any("error", err))
			}
		}),
	}
	if n.Creds != "" {
		opts = append(opts, nats.UserCredentials(n.Creds))
	}
	tc, err := n.TLS.config()
	if err != nil {
		return broker{}, fmt.Errorf("nats TLS: %w", err)
	}
	if tc != nil {
		opts = append(opts, nats.Secure(tc))
	}
	dopts := []natsdriver.Option{
		natsdriver.WithStreamPrefix(n.StreamPrefix), natsdriver.WithSubjectPrefix(n.SubjectPrefix),
		natsdriver.WithErrorHandler(func(err error) { logger.Warn("nats", slog.Any("error", err)) }),
	}
	if err := natsdriver.ValidateOptions(dopts...); err != nil { // before connecting: a bad prefix is a usage error
		return broker{}, err
	}
	nc, err := nats.Connect(n.URL, opts...)
	if err != nil {
		return broker{}, fmt.Errorf("nats: connect %s: %w", n.URL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return broker{}, err
	}
	d, err := natsdriver.New(js, dopts...)
	if err != nil {
		nc.Close()
		return broker{}, err
	}
	closeAll := func() error {
		err := d.Close()
		nc.Close()
		return err
	}
	return broker{writer: d, deadLetters: d.DeadLetters(), close: closeAll}, nil
}

// amqpFlags connect to RabbitMQ.
type amqpFlags struct {
	URL        string
	TLS        tlsFlags
	NamePrefix string
	Exchange   string
	clientName string
}

func (a *amqpFlags) register(f *flagSet, clientName string) {
	a.clientName = clientName
	f.str(&a.URL, "amqp-url", "HERALD_AMQP_URL", "", "RabbitMQ URL, amqp://user:password@host:5672/vhost (amqps:// for TLS; prefer the environment variable)")
	a.TLS.register(f, "amqp", "HERALD_AMQP")
	f.str(&a.NamePrefix, "amqp-name-prefix", "HERALD_AMQP_NAME_PREFIX", amqpdriver.DefaultNamePrefix,
		"prefix of the exchange and queue names (the services' amqpdriver.WithNamePrefix)")
	f.str(&a.Exchange, "amqp-exchange", "HERALD_AMQP_EXCHANGE", "",
		"the one exchange of every topic (the services' amqpdriver.WithExchange; default: an exchange per topic)")
}

// validate checks the flags; the URL only when it is set.
func (a amqpFlags) validate() []error {
	var errs []error
	if a.URL != "" {
		if _, err := amqp.ParseURI(a.URL); err != nil {
			errs = append(errs, fmt.Errorf("-amqp-url %s: %s", redactURL(a.URL), strings.ReplaceAll(err.Error(), a.URL, "the URL")))
		}
	}
	if a.TLS.on() && a.URL != "" && !strings.HasPrefix(a.URL, "amqps://") {
		errs = append(errs, errors.New("-amqp-tls-* need an amqps:// -amqp-url"))
	}
	return append(errs, a.TLS.validate("amqp")...)
}

// open returns a RabbitMQ driver; it dials when first used.
func (a amqpFlags) open() (broker, error) {
	opts := []amqpdriver.Option{
		amqpdriver.WithNamePrefix(a.NamePrefix), amqpdriver.WithConnectionName(a.clientName),
	}
	if a.Exchange != "" {
		opts = append(opts, amqpdriver.WithExchange(a.Exchange))
	}
	tc, err := a.TLS.config()
	if err != nil {
		return broker{}, fmt.Errorf("amqp TLS: %w", err)
	}
	var d *amqpdriver.Driver
	if tc == nil {
		d, err = amqpdriver.New(a.URL, opts...)
	} else {
		d, err = amqpdriver.NewDial(amqpdriver.URLDialer(a.URL, amqp.Config{TLSClientConfig: tc, Heartbeat: 10 * time.Second,
			Properties: amqp.Table{"connection_name": a.clientName}}), opts...)
	}
	if err != nil {
		return broker{}, err
	}
	return broker{writer: d, deadLetters: d.DeadLetters(), close: d.Close}, nil
}

// checkURL checks a server URL: one of schemes and a host, or a bare
// host:port.
func checkURL(s string, schemes ...string) error {
	if !strings.Contains(s, "://") {
		return checkHostPort(s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	for _, scheme := range schemes {
		if u.Scheme == scheme {
			if u.Host == "" {
				return errors.New("no host")
			}
			return nil
		}
	}
	return fmt.Errorf("scheme %q: want %s", u.Scheme, strings.Join(schemes, ", "))
}

// redactURL quotes s with the password of each URL in it (a comma-separated
// list) replaced by "xxxxx", for error messages.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		scheme, rest, ok := strings.Cut(p, "://")
		at := strings.LastIndexByte(rest, '@')
		if !ok || at < 0 {
			continue
		}
		if user, _, hasPassword := strings.Cut(rest[:at], ":"); hasPassword {
			parts[i] = scheme + "://" + user + ":xxxxx" + rest[at:]
		}
	}
	return strconv.Quote(strings.Join(parts, ","))
}
