package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald/nats/natsdriver"
)

// shop is the example's view of the server: its run's prefixes, and the
// streams and consumers the steps' drivers created. Those outlive the
// drivers, as does the drivers' release bucket, so the shop shows and
// deletes them at the end, through a driver of its own (names).
type shop struct {
	js            jetstream.JetStream
	streamPrefix  string
	subjectPrefix string
	names         *natsdriver.Driver // for names and DeleteGroup; runs no subscription
	streams       []string
	groups        []group
}

// group is one group's consumer on a topic.
type group struct{ topic, group string }

// newShop returns the shop of one run on js, with prefixes made of id.
func newShop(js jetstream.JetStream, id string) (*shop, error) {
	s := &shop{js: js, streamPrefix: "HX_" + id + "_", subjectPrefix: "hx." + id}
	d, err := s.driver()
	s.names = d
	return s, err
}

// driver returns a driver on the run's prefixes, with opts.
func (s *shop) driver(opts ...natsdriver.Option) (*natsdriver.Driver, error) {
	all := append([]natsdriver.Option{
		natsdriver.WithStreamPrefix(s.streamPrefix),
		natsdriver.WithSubjectPrefix(s.subjectPrefix),
		natsdriver.WithErrorHandler(func(error) {}),
	}, opts...)
	return natsdriver.New(s.js, all...)
}

// add records topic's stream and group's consumer on it.
func (s *shop) add(topic, name string) {
	if stream := s.names.StreamName(topic); !slices.Contains(s.streams, stream) {
		s.streams = append(s.streams, stream)
	}
	s.groups = append(s.groups, group{topic: topic, group: name})
}

// showStored prints how many messages topic's stream holds and its
// duplicate window.
func (s *shop) showStored(ctx context.Context, w io.Writer, topic string) error {
	name := s.names.StreamName(topic)
	stream, err := s.js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	fmt.Fprintf(w, "shop: published %d orders, then %d of them again with the same message IDs: stream %s holds %d messages (duplicate window %v)\n",
		orders, copies, name, info.State.Msgs, info.Config.Duplicates)
	return nil
}

// consumer returns the server's information on g's consumer.
func (s *shop) consumer(ctx context.Context, g group) (*jetstream.ConsumerInfo, error) {
	c, err := s.js.Consumer(ctx, s.names.StreamName(g.topic), natsdriver.Token(g.group))
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", g.group, g.topic, err)
	}
	return c.Info(ctx)
}

// showEmpty prints what each consumer still holds: nothing, once every
// bus has shut down gracefully.
func (s *shop) showEmpty(ctx context.Context, w io.Writer) error {
	for _, g := range s.groups {
		info, err := s.consumer(ctx, g)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "shutdown: consumer %s on stream %s: %d pending, %d unacknowledged\n",
			info.Name, info.Stream, info.NumPending, info.NumAckPending)
	}
	return nil
}

// remove deletes the consumers (DeleteGroup), the streams and the
// driver's release bucket, and closes the names driver.
func (s *shop) remove(w io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer s.names.Close()
	var errs []error
	for _, g := range s.groups {
		errs = append(errs, s.names.DeleteGroup(ctx, g.topic, g.group))
	}
	for _, name := range s.streams {
		errs = append(errs, s.js.DeleteStream(ctx, name))
	}
	// natsdriver's default bucket name: the stream prefix and RELEASES.
	bucket := s.streamPrefix + "RELEASES"
	if err := s.js.DeleteKeyValue(ctx, bucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(w, "cleanup:", err)
		return
	}
	fmt.Fprintf(w, "cleanup: deleted %d consumers, %d streams and the release bucket %s\n", len(s.groups), len(s.streams), bucket)
}
