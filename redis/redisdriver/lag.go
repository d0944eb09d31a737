package redisdriver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
)

// ErrLagUnknown is returned by a Subscription's Lag when Redis does not
// count the entries its group has not read yet. Redis before 7.0 keeps no
// such count. Redis 7 cannot tell while entries deleted with XDEL lie
// between the group's last delivered entry and the end of the stream (it
// clears when the group reads past them), nor for a group created by other
// means at an arbitrary ID or at the end of a stream that is not empty
// (the driver creates herald.StartLatest groups with the count set).
var ErrLagUnknown = errors.New("redisdriver: Redis cannot tell how many entries the group has not read")

// createAtEndScript creates group ARGV[1] of stream KEYS[1] at the end of
// the stream ("$", creating an empty stream if there is none) and, on
// Redis 7 or later, tells Redis that the group has read every entry added
// so far (ENTRIESREAD, from XINFO STREAM in the same atomic step). Without
// it Redis 7 cannot count the group's lag until the group first reads the
// stream's last entry, which a group that falls behind may not do for a
// long time. An error reply (BUSYGROUP for an existing group) is returned
// as it is.
var createAtEndScript = goredis.NewScript(`
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then
	return redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
end
for i = 1, #info - 1, 2 do
	if info[i] == 'entries-added' then
		return redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'ENTRIESREAD', info[i + 1])
	end
end
return redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$')
`)

// MessagingSystem names the broker for telemetry (herald.MessagingSystem).
func (d *Driver) MessagingSystem() string { return "redis" }

// Lag returns how many entries of the topic's stream the group has not
// acknowledged (herald.LagReporter): the group's lag, entries no member
// has read yet, plus its pending entries, read and not acknowledged. It
// counts the whole group, whichever member reads, and costs one XINFO
// GROUPS. Acknowledgments reach Redis in the background flush, so an Ack
// shows in Lag once flushed. It returns an error wrapping ErrLagUnknown
// when Redis cannot tell the lag, and one wrapping ErrNoGroup when the
// stream or the group does not exist (the next Fetch creates it again).
func (s *subscription) Lag(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.isClosing() {
		return 0, fail("lag", s.topic, s.group, "", herald.ErrClosed)
	}
	// The reply is parsed here rather than by go-redis's XInfoGroups, which
	// reports a lag Redis left out (before 7.0) as 0.
	reply, err := s.client.Do(ctx, "xinfo", "groups", s.stream).Result()
	if err != nil {
		if isNoGroup(err) || strings.Contains(err.Error(), "no such key") {
			return 0, fail("lag", s.topic, s.group, "", ErrNoGroup)
		}
		return 0, fail("lag", s.topic, s.group, "", err)
	}
	groups, ok := reply.([]any)
	if !ok {
		return 0, fail("lag", s.topic, s.group, "", fmt.Errorf("XINFO GROUPS replied %T", reply))
	}
	for _, g := range groups {
		fields, err := replyFields(g)
		if err != nil {
			return 0, fail("lag", s.topic, s.group, "", err)
		}
		if name, _ := fields["name"].(string); name != s.group {
			continue
		}
		pending, ok := fields["pending"].(int64)
		if !ok {
			return 0, fail("lag", s.topic, s.group, "", fmt.Errorf("XINFO GROUPS gave pending %v", fields["pending"]))
		}
		lagField, reported := fields["lag"]
		if !reported {
			return 0, fail("lag", s.topic, s.group, "(Redis 7 or later is needed)", ErrLagUnknown)
		}
		if lagField == nil {
			return 0, fail("lag", s.topic, s.group, "(entries were deleted ahead of the group)", ErrLagUnknown)
		}
		lag, ok := lagField.(int64)
		if !ok || lag < 0 || pending < 0 {
			return 0, fail("lag", s.topic, s.group, "", fmt.Errorf("XINFO GROUPS gave lag %v, pending %d", lagField, pending))
		}
		return lag + pending, nil
	}
	return 0, fail("lag", s.topic, s.group, "", ErrNoGroup)
}

// replyFields reads one group of an XINFO GROUPS reply: a map under RESP3,
// a flat list of names and values under RESP2. A nil value is Redis's
// null.
func replyFields(v any) (map[string]any, error) {
	fields := make(map[string]any)
	switch g := v.(type) {
	case map[any]any:
		for k, v := range g {
			if name, ok := k.(string); ok {
				fields[name] = v
			}
		}
	case []any:
		if len(g)%2 != 0 {
			return nil, fmt.Errorf("XINFO GROUPS gave an odd list of %d names and values", len(g))
		}
		for i := 0; i < len(g); i += 2 {
			if name, ok := g[i].(string); ok {
				fields[name] = g[i+1]
			}
		}
	default:
		return nil, fmt.Errorf("XINFO GROUPS gave a group as %T", v)
	}
	for name, v := range fields {
		if err, ok := v.(goredis.Error); ok {
			return nil, fmt.Errorf("XINFO GROUPS field %s: %w", name, err)
		}
	}
	return fields, nil
}
