package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// topology is the exchanges and queues the example declared (through its
// drivers), to show and delete with a connection of its own: queues and
// exchanges outlive the driver.
type topology struct {
	conn      *amqp.Connection
	exchanges []string
	queues    []string
	streams   []string
}

// addStream records the stream that keeps the retained topic (a
// dead-letter topic: see amqpdriver.WithRetainedTopics) and the stream of
// its redrive marks.
func (t *topology) addStream(d *amqpdriver.Driver, topic string) {
	t.streams = append(t.streams, d.StreamName(topic), d.StreamName(topic)+amqpdriver.RedrivenSuffix)
}

// add records the exchange of topic and the queue of group on it.
func (t *topology) add(d *amqpdriver.Driver, topic, group string) {
	t.exchanges = append(t.exchanges, d.ExchangeName(topic))
	t.queues = append(t.queues, d.QueueName(topic, group))
}

// showEmpty prints how many messages wait in each queue: none, once every
// bus has shut down gracefully.
func (t *topology) showEmpty(w io.Writer) error {
	ch, err := t.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	for _, name := range t.queues {
		q, err := settled(ch, name)
		if err != nil {
			return fmt.Errorf("queue %s: %w", name, err)
		}
		fmt.Fprintf(w, "shutdown: queue %s: %d messages ready, %d consumers\n", name, q.Messages, q.Consumers)
	}
	return nil
}

// settled returns the state of queue name once its consumer count has
// caught up with the closed channels: a quorum queue's leader learns of a
// closed consumer a moment after the channel closed, so a count read at
// once may still include it (waiting at most 5 s).
func settled(ch *amqp.Channel, name string) (amqp.Queue, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil || q.Consumers == 0 || time.Now().After(deadline) {
			return q, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// remove deletes the queues and exchanges.
func (t *topology) remove(w io.Writer) {
	ch, err := t.conn.Channel()
	if err != nil {
		fmt.Fprintln(w, "cleanup:", err)
		return
	}
	defer ch.Close()
	var errs []error
	for _, q := range append(t.queues, t.streams...) {
		_, err := ch.QueueDelete(q, false, false, false)
		errs = append(errs, err)
	}
	for _, e := range t.exchanges {
		errs = append(errs, ch.ExchangeDelete(e, false, false))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(w, "cleanup:", err)
		return
	}
	fmt.Fprintf(w, "cleanup: deleted %d queues, %d streams and %d exchanges\n", len(t.queues), len(t.streams), len(t.exchanges))
}
