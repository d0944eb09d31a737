package natsdriver_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/nats/natsdriver"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	goleak.VerifyTestMain(m)
}

// defaultNATSURL is where the tests look for a server unless
// HERALD_NATS_URL says otherwise.
const defaultNATSURL = "nats://127.0.0.1:4222"

// natsURL returns HERALD_NATS_URL (default defaultNATSURL) after checking
// that a server with JetStream answers there: a skip on a developer
// machine without one, a failure under CI.
func natsURL(t testing.TB) string {
	t.Helper()
	url := testenv.Getenv("HERALD_NATS_URL", defaultNATSURL)
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.NoReconnect())
	if err != nil {
		testenv.Unavailable(t, "nats not reachable at "+url+": "+err.Error())
		return ""
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
	}
	if err != nil {
		testenv.Unavailable(t, "nats at "+url+" has no JetStream: "+err.Error())
	}
	return url
}

// connect returns a JetStream context on a connection of its own, closed
// when t ends.
func connect(t testing.TB, url string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// testEnv is one test's view of the server: a connection and stream and
// subject prefixes of its own, whose streams are deleted when t ends.
type testEnv struct {
	url           string
	js            jetstream.JetStream
	streamPrefix  string
	subjectPrefix string
}

func newEnv(t testing.TB) testEnv {
	t.Helper()
	url := natsURL(t)
	return envOn(t, url, connect(t, url))
}

func envOn(t testing.TB, url string, js jetstream.JetStream) testEnv {
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	e := testEnv{url: url, js: js, streamPrefix: "HTEST_" + id + "_", subjectPrefix: "htest." + id}
	t.Cleanup(func() { e.deleteStreams(t) })
	return e
}

func (e testEnv) deleteStreams(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := e.js.StreamNames(ctx)
	var mine []string
	for n := range names.Name() {
		if strings.HasPrefix(n, e.streamPrefix) || strings.HasPrefix(n, "KV_"+e.streamPrefix) {
			mine = append(mine, n)
		}
	}
	for _, n := range mine {
		if err := e.js.DeleteStream(ctx, n); err != nil {
			t.Logf("deleting stream %s: %v", n, err)
		}
	}
}

func (e testEnv) options() []natsdriver.Option {
	return []natsdriver.Option{natsdriver.WithStreamPrefix(e.streamPrefix), natsdriver.WithSubjectPrefix(e.subjectPrefix)}
}

// driver returns a driver on the environment's prefixes, closed when t
// ends; background errors go to the test log unless opts install a
// handler.
func (e testEnv) driver(t testing.TB, opts ...natsdriver.Option) *natsdriver.Driver {
	t.Helper()
	all := append(append(e.options(), natsdriver.WithErrorHandler(testErrors(t))), opts...)
	d, err := natsdriver.New(e.js, all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// testErrors logs background errors of the driver.
func testErrors(t testing.TB) func(error) {
	var mu sync.Mutex
	done := false
	t.Cleanup(func() { mu.Lock(); done = true; mu.Unlock() })
	return func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t.Logf("driver error: %v", err)
		}
	}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			// A short AckWait keeps the in-progress signals busy while
			// the suite holds deliveries.
			return newEnv(t).driver(t, natsdriver.WithAckWait(2*time.Second), natsdriver.WithDelays())
		},
		MaxMessageBytes: natsdriver.DefaultMaxMessageBytes,
		DeliveryCounts:  true,
		Lag:             true,
		ErrorReporting:  true,
		Delay:           true,
		// Message.Time travels as RFC 3339 with nanoseconds.
		TimePrecision: time.Nanosecond,
	})
}

func message(topic, id, key string) *herald.Message {
	return &herald.Message{
		ID: id, Topic: topic, Key: key,
		ContentType: "text/plain", Data: []byte("payload " + id), Time: time.Now().UTC(),
		Headers: herald.Headers{"h": id},
	}
}

// fetchFor fetches from sub for about d and returns what arrived.
func fetchFor(t *testing.T, sub herald.Subscription, d time.Duration) []herald.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var got []herald.Delivery
	buf := make([]herald.Delivery, 64)
	for {
		n, err := sub.Fetch(ctx, buf)
		got = append(got, buf[:n]...)
		if ctx.Err() != nil {
			return got
		}
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
	}
}
