package memdriver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/heraldbus/herald"
)

// Changelog opens the changelog of a group table (herald.TableLog),
// creating it with the broker's partition count, which every memdriver
// topic has, so it is partitioned like any input. Changelogs live beside
// the topics, in a namespace of their own, and go with the Broker at
// Close. Each partition keeps the latest record of every key (tombstones
// included): a record is compacted away once a later one of its key is
// appended and the superseded records outnumber the kept ones, so memory
// follows the number of keys, not of updates.
func (b *Broker) Changelog(ctx context.Context, name, input string) (herald.Changelog, error) {
	if err := changelogNames(name, input); err != nil {
		return nil, fail("changelog", name, "", "", err)
	}
	if b.closed.Load() {
		return nil, fail("changelog", name, "", "", herald.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if v, ok := b.changelogs.Load(name); ok {
		return v.(*changelog), nil
	}
	cl := &changelog{broker: b, name: name, parts: make([]*changelogPartition, b.cfg.partitions)}
	for i := range cl.parts {
		cl.parts[i] = &changelogPartition{latest: make(map[string]int)}
	}
	v, _ := b.changelogs.LoadOrStore(name, cl)
	return v.(*changelog), nil
}

// changelogNames checks a changelog's name and its input topic's
// ("" for a view), as herald.ValidateName does.
func changelogNames(name, input string) error {
	if err := herald.ValidateName("changelog", name); err != nil {
		return err
	}
	if input == "" {
		return nil
	}
	return herald.ValidateName("topic", input)
}

type changelog struct {
	broker *Broker
	name   string
	parts  []*changelogPartition
}

// changelogPartition is one partition's records in offset order, with
// gaps where compaction removed superseded ones.
type changelogPartition struct {
	mu      sync.Mutex
	records []herald.ChangelogRecord
	latest  map[string]int // key -> index in records of its latest record
	end     uint64         // the next offset
	grew    chan struct{}  // closed at the next Append; nil while nobody waits
}

func (c *changelog) Partitions() int { return len(c.parts) }

// part returns partition i, or an error naming the operation (the
// context's own when ctx has ended).
func (c *changelog) part(ctx context.Context, op string, i int) (*changelogPartition, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.broker.closed.Load() {
		return nil, fail(op, c.name, "", "", herald.ErrClosed)
	}
	if i < 0 || i >= len(c.parts) {
		return nil, fail(op, c.name, "", fmt.Sprintf("partition %d of %d", i, len(c.parts)), errors.New("no such partition"))
	}
	return c.parts[i], nil
}

func (c *changelog) Append(ctx context.Context, partition int, recs []herald.ChangelogRecord) (uint64, error) {
	p, err := c.part(ctx, "changelog append", partition)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range recs {
		if r.Key == "" {
			return 0, fail("changelog append", c.name, "", fmt.Sprintf("partition %d", partition), herald.ErrNoKey)
		}
	}
	first := p.end
	for _, r := range recs {
		r.Offset = p.end
		if r.Deleted {
			r.Value = nil
		}
		p.end++
		if i, ok := p.latest[r.Key]; ok {
			p.records[i].Key = "" // superseded: dropped at the next compaction
		}
		p.latest[r.Key] = len(p.records)
		p.records = append(p.records, r)
	}
	if len(p.records) > 2*len(p.latest)+64 {
		p.compact()
	}
	if p.grew != nil {
		close(p.grew)
		p.grew = nil
	}
	return first, nil
}

// compact drops the superseded records (marked by an empty key: the
// latest of each key keeps its own); p.mu held.
func (p *changelogPartition) compact() {
	kept := p.records[:0]
	for _, r := range p.records {
		if i, ok := p.latest[r.Key]; ok && p.records[i].Offset == r.Offset {
			p.latest[r.Key] = len(kept)
			kept = append(kept, r)
		}
	}
	clear(p.records[len(kept):])
	p.records = kept
}

func (c *changelog) Read(ctx context.Context, partition int, from uint64, dst []herald.ChangelogRecord) (int, error) {
	p, err := c.part(ctx, "changelog read", partition)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.Search(len(p.records), func(i int) bool { return p.records[i].Offset >= from })
	n := 0
	for ; i < len(p.records) && n < len(dst); i++ {
		r := p.records[i]
		if j, ok := p.latest[r.Key]; !ok || j != i {
			continue // superseded, not compacted yet
		}
		dst[n] = r
		n++
	}
	return n, nil
}

func (c *changelog) End(ctx context.Context, partition int) (uint64, error) {
	p, err := c.part(ctx, "changelog end", partition)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.end, nil
}

func (c *changelog) Wait(ctx context.Context, partition int, offset uint64) error {
	p, err := c.part(ctx, "changelog wait", partition)
	if err != nil {
		return err
	}
	for {
		p.mu.Lock()
		if p.end > offset {
			p.mu.Unlock()
			return nil
		}
		if p.grew == nil {
			p.grew = make(chan struct{})
		}
		grew := p.grew
		p.mu.Unlock()
		select {
		case <-grew:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.broker.done:
			return fail("changelog wait", c.name, "", "", herald.ErrClosed)
		}
	}
}
