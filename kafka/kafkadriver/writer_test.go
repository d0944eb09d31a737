package kafkadriver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// fakeCluster starts an in-process kfake broker whatever
// HERALD_KAFKA_BROKERS says: these tests need to shape the broker.
func fakeCluster(t *testing.T, opts ...kfake.Opt) (*kfake.Cluster, []string) {
	t.Helper()
	base := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(partitions),
		kfake.GroupMinSessionTimeout(100 * time.Millisecond)}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()
}

// Partition is internal/keyhash's murmur2 (tested there against Kafka's
// own values); kafka-go's murmur2 balancer, which claims the same, agrees
// on keys of every length.
func TestPartitionMatchesKafkaGo(t *testing.T) {
	balancer := kafkago.Murmur2Balancer{Consistent: true}
	parts := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	for i := range 500 {
		key := strings.Repeat("k", i%9) + strconv.Itoa(i*7919)
		if got, want := kafkadriver.Partition(key, len(parts)), balancer.Balance(kafkago.Message{Key: []byte(key)}, parts...); got != want {
			t.Fatalf("Partition(%q) = %d, kafka-go's Murmur2Balancer says %d", key, got, want)
		}
	}
}

// Keyed messages land on the partition Partition names; read back with
// kafka-go directly, partition by partition.
func TestKeyedMessagesLandOnJavaPartition(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	ctx := testContext(t)
	topic := drivertest.Name(t, "t")
	const n = 7
	if err := d.CreateTopic(ctx, topic, n, 1); err != nil {
		t.Fatal(err)
	}
	var msgs []*herald.Message
	for i := range 60 {
		key := "order-" + strconv.Itoa(i)
		msgs = append(msgs, &herald.Message{ID: key, Topic: topic, Key: key, Data: []byte(key)})
	}
	if err := d.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	found := 0
	for p := range n {
		for _, m := range readPartition(t, brokers, topic, p) {
			if want := kafkadriver.Partition(string(m.Key), n); want != p {
				t.Errorf("key %s on partition %d, want %d", m.Key, p, want)
			}
			found++
		}
	}
	if found != len(msgs) {
		t.Fatalf("found %d messages, wrote %d", found, len(msgs))
	}
}

// readPartition returns everything partition p of topic holds.
func readPartition(t *testing.T, brokers []string, topic string, p int) []kafkago.Message {
	t.Helper()
	conn, err := (&kafkago.Dialer{Timeout: 10 * time.Second}).DialLeader(testContext(t), "tcp", brokers[0], topic, p)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, last, err := conn.ReadOffsets()
	if err != nil {
		t.Fatal(err)
	}
	var out []kafkago.Message
	for int64(len(out)) < last {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		batch := conn.ReadBatch(1, 1<<20)
		for {
			m, err := batch.ReadMessage()
			if err != nil {
				break
			}
			out = append(out, m)
		}
		if err := batch.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// Invalid input fails the whole Write before anything is sent.
func TestWriteRejectsBadInputAndSendsNothing(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	ctx := testContext(t)
	topic := newTopic(t, d)
	good := func(id string) *herald.Message {
		return &herald.Message{ID: id, Topic: topic, Key: "k", Data: []byte(id)}
	}
	tooBig := good("big")
	tooBig.Data = make([]byte, kafkadriver.DefaultMaxMessageBytes)
	for _, tc := range []struct {
		name string
		bad  *herald.Message
		want error
	}{
		{"colon in topic", &herald.Message{ID: "x", Topic: "orders:eu", Data: []byte("x")}, herald.ErrInvalidName},
		{"slash in topic", &herald.Message{ID: "x", Topic: "orders/eu", Data: []byte("x")}, herald.ErrInvalidName},
		{"space in topic", &herald.Message{ID: "x", Topic: "orders eu", Data: []byte("x")}, herald.ErrInvalidName},
		{"too large with its key", tooBig, herald.ErrMessageTooLarge},
		{"nil message", nil, herald.ErrNilEvent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.Write(ctx, []*herald.Message{good("before-" + tc.name), tc.bad, good("after-" + tc.name)})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Write = %v, want %v", err, tc.want)
			}
		})
	}
	// Nothing of those writes reached the topic.
	if err := d.Write(ctx, []*herald.Message{good("marker")}); err != nil {
		t.Fatal(err)
	}
	if got := readPartition(t, brokers, topic, kafkadriver.Partition("k", partitions)); len(got) != 1 {
		t.Fatalf("the partition holds %d messages, want only the marker", len(got))
	}
}

// A partition whose broker refuses the batch: the error names the topic,
// the partition and the messages, and only those. (kfake answers for the
// other partitions of the intercepted request without storing them, so
// what reaches the log is checked by the size-limit test below.)
func TestWriteErrorNamesTopicPartitionAndMessages(t *testing.T) {
	c, brokers := fakeCluster(t)
	d := newDriver(t, brokers, false)
	ctx := testContext(t)
	topic := newTopic(t, d)
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		hasOne := false
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				hasOne = hasOne || rp.Partition == 1
			}
		}
		if !hasOne {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		resp.SetVersion(req.GetVersion())
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				if rp.Partition == 1 {
					sp.ErrorCode = kerr.InvalidRecord.Code
				}
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	var msgs []*herald.Message
	failing := map[string]bool{}
	for i := range 3 {
		for p := range partitions {
			key := keyFor(p, "k"+strconv.Itoa(i))
			id := fmt.Sprintf("p%d-%d", p, i)
			msgs = append(msgs, &herald.Message{ID: id, Topic: topic, Key: key, Data: []byte(id)})
			if p == 1 {
				failing[id] = true
			}
		}
	}
	err := d.Write(ctx, msgs)
	var we *herald.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("Write = %v, want a *herald.WriteError", err)
	}
	if !errors.Is(err, kafkago.InvalidRecord) {
		t.Errorf("the broker's error is not reachable with errors.Is: %v", err)
	}
	if !strings.Contains(err.Error(), strconv.Quote(topic)) || !strings.Contains(err.Error(), "partition 1") {
		t.Errorf("error does not name the topic and partition: %v", err)
	}
	// Partition 1's first message fails with the broker's error. After a
	// failure, the Write sends nothing more: whatever was not in a request
	// yet fails with ErrNotSent, on any partition, and each partition's
	// failures are the tail of its messages.
	if we.Messages != len(msgs) {
		t.Errorf("WriteError counts %d messages, want %d", we.Messages, len(msgs))
	}
	failedAt := map[string]error{}
	for _, f := range we.Failed {
		if f.Topic != topic || msgs[f.Index].ID != f.ID || f.Partition != kafkadriver.Partition(msgs[f.Index].Key, partitions) {
			t.Errorf("failure %+v does not match its message", f)
		}
		failedAt[f.ID] = f.Err
		if !failing[f.ID] && !errors.Is(f, kafkadriver.ErrNotSent) {
			t.Errorf("message %s of partition %d failed with %v, want ErrNotSent", f.ID, f.Partition, f.Err)
		}
	}
	if !errors.Is(failedAt["p1-0"], kafkago.InvalidRecord) {
		t.Errorf("first message of partition 1: %v, want the broker's InvalidRecord", failedAt["p1-0"])
	}
	for p := range partitions {
		failed := false
		for i := range 3 {
			id := fmt.Sprintf("p%d-%d", p, i)
			if _, ok := failedAt[id]; ok {
				failed = true
			} else if failed {
				t.Errorf("partition %d: %s was written after an earlier message of the Write failed", p, id)
			}
		}
	}
}

// A batch larger than the broker's message.max.bytes is split, so only the
// message that is too large by itself fails; after it, the rest of that
// Write is not sent, so what was written is a prefix.
func TestBrokerSizeLimitSplitsBatchesAndStopsAtTheFailure(t *testing.T) {
	_, brokers := fakeCluster(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4000"}))
	d := newDriver(t, brokers, false)
	ctx := testContext(t)
	topic := newTopic(t, d)
	var msgs []*herald.Message
	for i := range 21 {
		size := 600
		if i == 10 {
			size = 5000
		}
		id := "m" + strconv.Itoa(i)
		msgs = append(msgs, &herald.Message{ID: id, Topic: topic, Key: "one-key", Data: bytes.Repeat([]byte{'x'}, size)})
	}
	err := d.Write(ctx, msgs)
	var we *herald.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("Write = %v, want a *herald.WriteError", err)
	}
	for _, f := range we.Failed {
		switch {
		case f.Index < 10:
			t.Errorf("message %s before the large one failed: %v", f.ID, f.Err)
		case f.Index == 10 && !errors.Is(f, herald.ErrMessageTooLarge):
			t.Errorf("the large message failed with %v, want ErrMessageTooLarge", f.Err)
		case f.Index > 10 && !errors.Is(f, kafkadriver.ErrNotSent):
			t.Errorf("message %s after the large one: %v, want ErrNotSent", f.ID, f.Err)
		}
	}
	if len(we.Failed) != 11 {
		t.Errorf("%d messages failed, want 11: %v", len(we.Failed), err)
	}
	got := readPartition(t, brokers, topic, kafkadriver.Partition("one-key", partitions))
	if len(got) != 10 {
		t.Fatalf("partition holds %d messages, want the 10 before the large one", len(got))
	}
	for i, m := range got {
		if len(m.Value) != 600 {
			t.Fatalf("message %d has %d bytes", i, len(m.Value))
		}
	}
}

// Without auto-creation, a Write to a topic that does not exist fails,
// naming the topic, once the request timeout has passed.
func TestWriteToMissingTopic(t *testing.T) {
	_, brokers := fakeCluster(t)
	d, err := kafkadriver.New(brokers, kafkadriver.WithRequestTimeout(300*time.Millisecond), kafkadriver.WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.Write(testContext(t), []*herald.Message{{ID: "x", Topic: "no-such-topic", Data: []byte("x")}})
	if !errors.Is(err, kafkago.UnknownTopicOrPartition) || !strings.Contains(err.Error(), `"no-such-topic"`) {
		t.Fatalf("Write = %v, want UnknownTopicOrPartition naming the topic", err)
	}
}

func TestCompressionRoundTrip(t *testing.T) {
	brokers, real := cluster(t)
	for _, codec := range []kafkadriver.Compression{kafkadriver.CompressionGzip, kafkadriver.CompressionSnappy, kafkadriver.CompressionLz4, kafkadriver.CompressionZstd} {
		t.Run(codec.String(), func(t *testing.T) {
			d := newDriver(t, brokers, real, kafkadriver.WithCompression(codec))
			roundTrip(t, d, newTopic(t, d))
		})
	}
}

// roundTrip writes 100 messages with headers and reads them back.
func roundTrip(t *testing.T, d *kafkadriver.Driver, topic string) {
	t.Helper()
	ctx := testContext(t)
	sub, err := d.Subscribe(ctx, topic, drivertest.Name(t, "g"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sub.Close(ctx); err != nil {
			t.Error(err)
		}
	}()
	var msgs []*herald.Message
	for i := range 100 {
		id := "m" + strconv.Itoa(i)
		msgs = append(msgs, &herald.Message{
			ID: id, Topic: topic, Key: "k" + strconv.Itoa(i%7), ContentType: "text/plain",
			Headers: herald.Headers{"n": strconv.Itoa(i)}, Data: []byte(strings.Repeat(id, 20)), Time: time.Now(),
		})
	}
	if err := d.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	buf := make([]herald.Delivery, 64)
	for got := 0; got < len(msgs); {
		n, err := sub.Fetch(ctx, buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, dl := range buf[:n] {
			m := dl.Message
			i, _ := strconv.Atoi(m.Headers["n"])
			if want := msgs[i]; m.ID != want.ID || m.Key != want.Key || m.ContentType != want.ContentType || !bytes.Equal(m.Data, want.Data) {
				t.Fatalf("got %+v, want %+v", m, want)
			}
			if err := sub.Ack(ctx, dl); err != nil {
				t.Fatal(err)
			}
		}
		got += n
	}
}

// TLS with SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 against kfake, and
// a wrong password that fails.
func TestTLSAndSASL(t *testing.T) {
	serverTLS, clientTLS := selfSignedTLS(t)
	_, brokers := fakeCluster(t,
		kfake.TLS(serverTLS),
		kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plain-user", "plain-pass"),
		kfake.Superuser("SCRAM-SHA-256", "scram256-user", "scram256-pass"),
		kfake.Superuser("SCRAM-SHA-512", "scram512-user", "scram512-pass"),
	)
	for _, tc := range []struct {
		name string
		auth kafkadriver.Option
	}{
		{"PLAIN", kafkadriver.WithSASLPlain("plain-user", "plain-pass")},
		{"SCRAM-SHA-256", kafkadriver.WithSASLSCRAM(kafkadriver.SCRAMSHA256, "scram256-user", "scram256-pass")},
		{"SCRAM-SHA-512", kafkadriver.WithSASLSCRAM(kafkadriver.SCRAMSHA512, "scram512-user", "scram512-pass")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriver(t, brokers, false, kafkadriver.WithTLS(clientTLS), tc.auth)
			roundTrip(t, d, newTopic(t, d))
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		d := newDriver(t, brokers, false, kafkadriver.WithTLS(clientTLS),
			kafkadriver.WithSASLSCRAM(kafkadriver.SCRAMSHA256, "scram256-user", "wrong"), kafkadriver.WithRequestTimeout(2*time.Second))
		err := d.Write(testContext(t), []*herald.Message{{ID: "x", Topic: drivertest.Name(t, "t"), Data: []byte("x")}})
		if err == nil {
			t.Fatal("Write with a wrong password succeeded")
		}
	})
}

// selfSignedTLS returns a server config for 127.0.0.1 and a client config
// that trusts it.
func selfSignedTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "kfake"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func TestNewReportsEveryInvalidOption(t *testing.T) {
	_, err := kafkadriver.New(nil,
		kafkadriver.WithBatchSize(0),
		kafkadriver.WithHeartbeatInterval(time.Minute),
		kafkadriver.WithRevokeTimeout(time.Hour),
		kafkadriver.WithCompression(kafkadriver.Compression(42)),
		kafkadriver.WithSASLSCRAM(kafkadriver.SCRAMSHA256, "", "pw"),
		kafkadriver.WithStartPosition(herald.StartPosition(7)),
	)
	if err == nil {
		t.Fatal("New accepted an invalid configuration")
	}
	if !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("New = %v, want it to wrap herald.ErrInvalidOption", err)
	}
	for _, want := range []string{"no broker addresses", "batch size", "heartbeat interval", "revoke timeout", "compression", "SCRAM needs a user", "start position 7"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
}

// Close closes the subscriptions still open, and later calls fail with
// ErrClosed.
func TestDriverClose(t *testing.T) {
	brokers, real := cluster(t)
	d, err := kafkadriver.New(brokers, groupOptions(real)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	topic := newTopic(t, d)
	sub, err := d.Subscribe(ctx, topic, drivertest.Name(t, "g"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*herald.Message{{ID: "x", Topic: topic, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Fetch(ctx, make([]herald.Delivery, 1)); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Fetch after the driver closed = %v, want ErrClosed", err)
	}
	if err := d.Write(ctx, []*herald.Message{{ID: "y", Topic: topic, Data: []byte("y")}}); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if _, err := d.Subscribe(ctx, topic, drivertest.Name(t, "g")); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// A Write whose context ends while its messages wait behind a slow
// request withdraws them.
func TestCancelledWriteWithdrawsUnsentMessages(t *testing.T) {
	c, brokers := fakeCluster(t)
	d := newDriver(t, brokers, false)
	ctx := testContext(t)
	topic := newTopic(t, d)
	release, held := make(chan struct{}), make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		close(held)
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	first := make(chan error, 1)
	go func() {
		first <- d.Write(ctx, []*herald.Message{{ID: "first", Topic: topic, Key: "k", Data: []byte("first")}})
	}()
	// The first request is held by the broker; queue a second Write
	// behind it and give up on it.
	<-held
	short, cancel := context.WithCancel(ctx)
	second := make(chan error, 1)
	go func() {
		second <- d.Write(short, []*herald.Message{{ID: "second", Topic: topic, Key: "k", Data: []byte("second")}})
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Write = %v, want context.Canceled", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	got := readPartition(t, brokers, topic, kafkadriver.Partition("k", partitions))
	if len(got) != 1 || string(got[0].Value) != "first" {
		t.Fatalf("partition holds %d messages; the withdrawn one was sent", len(got))
	}
}
