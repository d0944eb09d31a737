package amqpdriver

import (
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
)

// Reserved headers of this driver, on top of herald's own (message.go in
// the root package). Both are removed before a message reaches herald.
const (
	// HeaderKey carries Message.Key: the routing key holds it too, but
	// only when it is at most 255 bytes and the driver routes by key (no
	// WithExchange).
	HeaderKey = "herald-key"
	// HeaderTimeNanos carries Message.Time as Unix nanoseconds (decimal):
	// the AMQP timestamp property keeps only seconds.
	HeaderTimeNanos = "herald-time-ns"
	// headerDeliveryCount is the quorum queues' count of earlier
	// deliveries; it is removed from the headers (see the package
	// documentation, "Delivery counts").
	headerDeliveryCount = "x-delivery-count"
	// headerStreamOffset is a stream delivery's offset, which the
	// dead-letter store takes as the entry's position.
	headerStreamOffset = "x-stream-offset"
)

// publishing is m in AMQP: persistent, with its ID, content type, time and
// headers as properties and its payload as the body.
func publishing(m *herald.Message) amqp.Publishing {
	h := make(amqp.Table, len(m.Headers)+2)
	for k, v := range m.Headers {
		h[k] = v
	}
	if m.Key != "" {
		h[HeaderKey] = m.Key
	}
	p := amqp.Publishing{
		Headers:      h,
		ContentType:  m.ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Body:         m.Data,
	}
	if !m.Time.IsZero() {
		p.Timestamp = m.Time
		h[HeaderTimeNanos] = strconv.FormatInt(m.Time.UnixNano(), 10)
	}
	return p
}

// routingKey is what m is published with: its topic on a shared exchange,
// else its key when AMQP can carry it (a short string, up to 255 bytes).
func (c config) routingKey(m *herald.Message) string {
	switch {
	case c.exchange != "":
		return m.Topic
	case len(m.Key) <= maxKeyBytes:
		return m.Key
	}
	return ""
}

// message is the herald message of a delivery from topic.
func message(topic string, d *amqp.Delivery) *herald.Message {
	m := &herald.Message{
		ID:          d.MessageId,
		Topic:       topic,
		ContentType: d.ContentType,
		Data:        d.Body,
	}
	if !d.Timestamp.IsZero() {
		m.Time = d.Timestamp
	}
	if len(d.Headers) > 0 {
		m.Headers = make(herald.Headers, len(d.Headers))
	}
	for k, v := range d.Headers {
		switch k {
		case HeaderKey:
			m.Key = headerString(v)
		case HeaderTimeNanos:
			if ns, err := strconv.ParseInt(headerString(v), 10, 64); err == nil {
				m.Time = time.Unix(0, ns).UTC()
			}
		case headerDeliveryCount, headerStreamOffset:
		default:
			m.Headers[k] = headerString(v)
		}
	}
	return m
}

// headerString is a header value as text: strings as they are, anything
// another publisher put there (numbers, booleans, tables) as fmt prints it.
func headerString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}
