package redisdriver

import goredis "github.com/redis/go-redis/v9"

// The Lua scripts below each touch one key (the stream), so they run on
// Redis Cluster too. A *goredis.Script is immutable once built (it holds the
// source and its SHA-1), so sharing these between Drivers shares no mutable
// state.

// maxScriptIDs bounds the entry IDs passed to one script call: Lua's unpack
// has a stack limit of a few thousand values.
const maxScriptIDs = 1000

// touchScript keeps a consumer's in-flight entries claimed. For each ID in
// ARGV[3..] that is still pending for consumer ARGV[2] of group ARGV[1] on
// stream KEYS[1], it resets the entry's idle time (XCLAIM ... JUSTID to the
// same consumer, which does not count a delivery), so that no other member's
// XAUTOCLAIM takes it while its handler runs. Checking the owner first, in
// the same atomic step, keeps it from stealing back an entry that another
// member already took over. It returns the IDs that were not pending for
// the consumer any more.
var touchScript = goredis.NewScript(`
local owned = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
local lost = {}
for i = 3, #ARGV do
	local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
	if #p > 0 then
		owned[#owned + 1] = ARGV[i]
	else
		lost[#lost + 1] = ARGV[i]
	end
end
if #owned > 5 then
	owned[#owned + 1] = 'JUSTID'
	redis.call(unpack(owned))
end
return lost
`)

// deleteConsumerScript deletes consumer ARGV[2] from group ARGV[1] of stream
// KEYS[1] only if it has no pending entries, in one atomic step, so that no
// entry is ever dropped with its consumer (XGROUP DELCONSUMER discards the
// consumer's pending entries). It returns 1 when it deleted the consumer,
// 0 when it had pending entries.
var deleteConsumerScript = goredis.NewScript(`
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
	return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
`)
