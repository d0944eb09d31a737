package natsdriver

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
)

// The server counts every delivery (NumDelivered) and cannot take a count
// back, so the driver keeps the hand-backs that were not attempts itself:
// a key-value bucket (WithReleaseBucket) holds, for each message handed
// back unstarted and not yet acknowledged, how many times that happened,
// and Delivery.Count is NumDelivered less that. The record is written
// before the hand-back and deleted after the acknowledgment.

// releaseTTL bounds how long a record stays in the bucket without being
// deleted (its message left the stream unacknowledged, by max age or a
// purge): a message handed back and not delivered again for that long
// counts its hand-backs again.
const releaseTTL = 7 * 24 * time.Hour

// releases returns the bucket of release records, creating it on first
// use.
func (d *Driver) releases(ctx context.Context) (jetstream.KeyValue, error) {
	d.kvMu.Lock()
	defer d.kvMu.Unlock()
	if d.kv != nil {
		return d.kv, nil
	}
	name := d.cfg.releaseBucket
	kv, err := d.js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = d.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      name,
			Description: "herald: deliveries handed back before a handler started them",
			TTL:         releaseTTL,
			Storage:     d.cfg.storage,
			Replicas:    d.cfg.replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = d.js.KeyValue(ctx, name)
		}
	}
	if err != nil {
		return nil, fail("subscribe", "", "", "release bucket "+name, err)
	}
	d.kv = kv
	return kv, nil
}

// releaseKey names the record of the message at stream sequence seq for
// one consumer.
func releaseKey(stream, consumer string, seq uint64) string {
	return stream + "." + consumer + "." + strconv.FormatUint(seq, 10)
}

// released returns how many times the message of key was handed back
// unstarted, for a delivery the server counts numDelivered. ctx bounds
// the read with 10 s.
func (s *subscription) released(ctx context.Context, key string, numDelivered uint64) (uint64, error) {
	if numDelivered <= 1 {
		return 0, nil // a first delivery: nothing was handed back
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(e.Value()), 10, 64)
}

// count is Delivery.Count of a delivery: what the server counts less the
// hand-backs that were not attempts, or 0 (unknown) when the record
// cannot be read.
func (s *subscription) count(h *held) int {
	r, err := s.released(s.ctx, h.key, h.numDelivered)
	if err != nil {
		s.onError(s.fail("fetch", "reading the release record of stream sequence "+strconv.FormatUint(h.seq, 10)+" (Count left unknown)", err))
		return 0
	}
	h.released = r
	return int(max(1, h.numDelivered-r))
}

// Release records that the deliveries ds were handed back before a
// handler started them, so that their next delivery does not count this
// one (herald.Releaser). The scheduler calls it before Close, which
// hands them back. It waits for the records, bounded by 10 s; a record
// that could not be written is reported, and that hand-back counts.
func (s *subscription) Release(ds []herald.Delivery) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, d := range ds {
		h, ok := d.Ref.(*held)
		s.mu.Lock()
		if ok {
			_, ok = s.held[h]
		}
		s.mu.Unlock()
		if ok {
			s.release(ctx, h)
		}
	}
}

// release writes h's record, one hand-back more.
func (s *subscription) release(ctx context.Context, h *held) {
	if _, err := s.kv.Put(ctx, h.key, []byte(strconv.FormatUint(h.released+1, 10))); err != nil {
		s.onError(s.fail("release", "stream sequence "+strconv.FormatUint(h.seq, 10)+" (its hand-back counts)", err))
		return
	}
	h.released++
}

// forgetReleases deletes h's record after its acknowledgment.
func (s *subscription) forgetReleases(ctx context.Context, h *held) {
	if h.released == 0 {
		return
	}
	if err := s.kv.Delete(ctx, h.key); err != nil {
		s.onError(s.fail("ack", "deleting the release record of stream sequence "+strconv.FormatUint(h.seq, 10), err))
	}
}
