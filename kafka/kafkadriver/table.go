package kafkadriver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/heraldbus/herald"
	kafkago "github.com/segmentio/kafka-go"
)

// headerTableInput carries a changelog record's ChangelogRecord.Input.
const headerTableInput = "herald-table-input"

// changelogWait is how long one Fetch of Changelog.Wait waits on the
// broker before it asks again.
const changelogWait = 500 * time.Millisecond

// Changelog opens the changelog of a group table (herald.TableLog): the
// topic named name, which a processor creates when it is missing with
// as many partitions as its input topic and cleanup.policy=compact, so
// the cluster keeps the latest record of each key. A processor's
// changelog must have as many partitions as its input (an error says so
// otherwise); a view's (input "") must exist.
func (d *Driver) Changelog(ctx context.Context, name, input string) (herald.Changelog, error) {
	if err := validateTopic(name); err != nil {
		return nil, fail("changelog", name, "", "", err)
	}
	if input != "" {
		if err := validateTopic(input); err != nil {
			return nil, fail("changelog", input, "", "input topic", err)
		}
	}
	if d.isClosed() {
		return nil, fail("changelog", name, "", "", ErrClosed)
	}
	if input == "" {
		tm, err := d.lookupTopic(ctx, name, false)
		if err != nil {
			return nil, fail("changelog", name, "", "no such changelog (yet)", err)
		}
		return &changelog{d: d, name: name, parts: len(tm.leaders)}, nil
	}
	in, err := d.topicInfo(ctx, input)
	if err != nil {
		return nil, err
	}
	if err := d.createChangelog(ctx, name, len(in.leaders)); err != nil {
		return nil, err
	}
	tm, err := d.topicInfo(ctx, name)
	if err != nil {
		return nil, err
	}
	if len(tm.leaders) != len(in.leaders) {
		return nil, fail("changelog", name, "", fmt.Sprintf("%d partitions, input topic %q %d: a table's changelog is partitioned like its input",
			len(tm.leaders), input, len(in.leaders)), herald.ErrTablesNotSupported)
	}
	return &changelog{d: d, name: name, parts: len(tm.leaders)}, nil
}

// createChangelog creates the compacted changelog topic unless it exists.
func (d *Driver) createChangelog(ctx context.Context, name string, partitions int) error {
	res, err := d.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{
		Topics: []kafkago.TopicConfig{{
			Topic: name, NumPartitions: partitions, ReplicationFactor: -1,
			ConfigEntries: []kafkago.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}},
		}},
	})
	if err == nil {
		err = res.Errors[name]
	}
	if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) && !d.topicExists(ctx, name) {
		return fail("create", name, "", "changelog topic", err)
	}
	d.forgetTopic(name)
	return nil
}

type changelog struct {
	d     *Driver
	name  string
	parts int
}

func (c *changelog) Partitions() int { return c.parts }

// check refuses a closed driver and a partition out of range.
func (c *changelog) check(op string, partition int) error {
	if c.d.isClosed() {
		return fail(op, c.name, "", "", ErrClosed)
	}
	if partition < 0 || partition >= c.parts {
		return fail(op, c.name, "", fmt.Sprintf("partition %d of %d", partition, c.parts), errors.New("no such partition"))
	}
	return nil
}

// Append produces recs to partition, acknowledged by every in-sync
// replica; a tombstone has a null value, which compaction removes.
func (c *changelog) Append(ctx context.Context, partition int, recs []herald.ChangelogRecord) (uint64, error) {
	if err := c.check("changelog append", partition); err != nil {
		return 0, err
	}
	records := make([]kafkago.Record, len(recs))
	for i, r := range recs {
		if r.Key == "" {
			return 0, fail("changelog append", c.name, "", fmt.Sprintf("partition %d", partition), herald.ErrNoKey)
		}
		records[i] = kafkago.Record{
			Key:     kafkago.NewBytes([]byte(r.Key)),
			Headers: []kafkago.Header{{Key: headerTableInput, Value: strconv.AppendUint(nil, r.Input, 10)}},
		}
		if !r.Deleted {
			records[i].Value = kafkago.NewBytes(r.Value)
		}
	}
	res, err := c.d.client.Produce(ctx, &kafkago.ProduceRequest{
		Topic: c.name, Partition: partition, RequiredAcks: kafkago.RequireAll,
		Records: kafkago.NewRecordReader(records...),
	})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fail("changelog append", c.name, "", fmt.Sprintf("partition %d", partition), err)
	}
	return uint64(res.BaseOffset), nil
}

// fetch asks for partition's records from offset, waiting up to wait for
// the first; an offset below what the log still holds moves to its start.
func (c *changelog) fetch(ctx context.Context, op string, partition int, offset uint64, wait time.Duration) (*kafkago.FetchResponse, error) {
	if err := c.check(op, partition); err != nil {
		return nil, err
	}
	for {
		res, err := c.d.client.Fetch(ctx, &kafkago.FetchRequest{
			Topic: c.name, Partition: partition, Offset: int64(offset),
			MinBytes: 1, MaxBytes: 4 << 20, MaxWait: wait,
		})
		if err == nil {
			err = res.Error
		}
		if errors.Is(err, kafkago.OffsetOutOfRange) && res != nil && res.LogStartOffset > int64(offset) {
			offset = uint64(res.LogStartOffset) // compacted or deleted below
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fail(op, c.name, "", fmt.Sprintf("partition %d offset %d", partition, offset), err)
		}
		return res, nil
	}
}

func (c *changelog) Read(ctx context.Context, partition int, from uint64, dst []herald.ChangelogRecord) (int, error) {
	res, err := c.fetch(ctx, "changelog read", partition, from, time.Millisecond)
	if err != nil {
		return 0, err
	}
	if res.Records == nil {
		return 0, nil
	}
	n := 0
	for n < len(dst) {
		r, err := res.Records.ReadRecord()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fail("changelog read", c.name, "", fmt.Sprintf("partition %d", partition), err)
		}
		if r.Offset < int64(from) {
			continue // the batch began before from
		}
		rec, err := changelogRecord(*r)
		if err != nil {
			return 0, fail("changelog read", c.name, "", fmt.Sprintf("partition %d offset %d", partition, r.Offset), err)
		}
		dst[n] = rec
		n++
	}
	return n, nil
}

// changelogRecord decodes one Kafka record of a changelog.
func changelogRecord(r kafkago.Record) (herald.ChangelogRecord, error) {
	rec := herald.ChangelogRecord{Offset: uint64(r.Offset)}
	key, err := readBytes(r.Key)
	if err != nil {
		return rec, err
	}
	rec.Key = string(key)
	if r.Value == nil {
		rec.Deleted = true
	} else if rec.Value, err = readBytes(r.Value); err != nil {
		return rec, err
	}
	for _, h := range r.Headers {
		if h.Key == headerTableInput {
			if rec.Input, err = strconv.ParseUint(string(h.Value), 10, 64); err != nil {
				return rec, fmt.Errorf("header %s: %w", headerTableInput, err)
			}
		}
	}
	return rec, nil
}

// readBytes reads all of b (nil for a null).
func readBytes(b kafkago.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	defer b.Close()
	return io.ReadAll(b)
}

func (c *changelog) End(ctx context.Context, partition int) (uint64, error) {
	if err := c.check("changelog end", partition); err != nil {
		return 0, err
	}
	res, err := c.d.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{
		Topics: map[string][]kafkago.OffsetRequest{c.name: {kafkago.LastOffsetOf(partition)}},
	})
	if err != nil {
		return 0, fail("changelog end", c.name, "", fmt.Sprintf("partition %d", partition), err)
	}
	for _, po := range res.Topics[c.name] {
		if po.Partition == partition {
			if po.Error != nil {
				return 0, fail("changelog end", c.name, "", fmt.Sprintf("partition %d", partition), po.Error)
			}
			return uint64(po.LastOffset), nil
		}
	}
	return 0, fail("changelog end", c.name, "", fmt.Sprintf("partition %d", partition), kafkago.UnknownTopicOrPartition)
}

// Wait long-polls the partition's leader until a record lies at offset
// or beyond.
func (c *changelog) Wait(ctx context.Context, partition int, offset uint64) error {
	for {
		res, err := c.fetch(ctx, "changelog wait", partition, offset, changelogWait)
		if err != nil {
			return err
		}
		if res.HighWatermark > int64(offset) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
