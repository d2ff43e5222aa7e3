//! The semaphore's scripts.
//!
//! Key layout for the semaphore whose full key is `K`, under the backend's prefix `P` (the
//! same hash tag as the lock `K`, different keys: the lock and the semaphore of one name are
//! independent):
//!
//! | Redis key | holds |
//! |---|---|
//! | `P{K}:sem` | sorted set of the permits: member = owner token (hex), score = expiry (ms, the server's `TIME`) |
//! | `P{K}:sem:info` | hash: `limit` = the number of permits the holders use; one field per holder, owner → fencing token; `m:<owner>` → the holder's metadata (`"\n<JSON>"`) |
//! | `P{K}:sem:fence` | the fencing counter, one for all the permits: never expires |
//! | `P{K}:sem:q` | the queue of waiters, as the lock's: a release wakes one |
//! | channel `P{K}:sem:released` | unused (a release wakes one waiter on its client's channel) |
//!
//! The set and the hash expire (`PEXPIRE`) with the last permit, and the hash is deleted with
//! the last release, so an unused semaphore leaves only its counter behind. Expired members
//! are dropped by every acquire, before counting.
//!
//! Every script takes the three keys, in that order; the acquire and the release also the
//! queue, fourth.

use std::sync::LazyLock;

use redis::Script;

use super::script;

/// ARGV: owner hex, ttl ms, the number of permits asked for, the holder's metadata
/// (`"\n<JSON>"` or empty), (unused), for a waiting acquire how long its registration in the
/// queue of waiters lasts (ms; empty: not waiting) and its entry there (see the lock's
/// [`ACQUIRE`](super::ACQUIRE)).
/// Drops expired permits; then returns `{1, fence}` when a permit is granted (or already
/// ours: granted again with a new token, as the lock's [`ACQUIRE`](super::ACQUIRE) does),
/// `{2, limit}` when the holders use another number of permits
/// (nothing written), `{0, ms}` when all permits are taken (`ms`: until the first expires).
/// A grant's token is `max(counter + 1, TIME in µs)`, as the lock's.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local us, t = now_us()
local now = math.floor(us / 1000)
local ttl = tonumber(ARGV[2])
local waits = KEYS[4] and ARGV[6] and ARGV[6] ~= ''
prune(KEYS[1], KEYS[2], now)
local held = not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1])
if held and held > 0 then
  local limit = tonumber(redis.call('HGET', KEYS[2], 'limit') or ARGV[3])
  if limit ~= tonumber(ARGV[3]) then return {2, tostring(limit)} end
  if held >= limit then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if waits then queue_up(KEYS[4], ARGV[7], now, tonumber(ARGV[6])) end
    return {0, tostring(tonumber(first[2]) - now)}
  end
end
if waits then redis.call('ZREM', KEYS[4], ARGV[7]) end
local f = next_fence(KEYS[3], us, t)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], f, 'limit', ARGV[3])
remember(KEYS[2], ARGV[1], ARGV[4])
keep(ttl, KEYS[1], KEYS[2])
return {1, f}
"#,
    )
});

/// ARGV: owner hex, ttl ms. Extends our unexpired permit (`ZADD XX`); 1 if done, 0 if gone.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return stay(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
"#,
    )
});

/// ARGV: owner hex, channel, (unused), (unused), our entry in the queue as a waiter. Removes
/// our permit (`ZREM`) and wakes one waiter of the queue; 1 if it was unexpired, 0 if it had
/// expired or was gone (our entry is then taken out of the queue: a waiter that gave up).
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return leave(KEYS[1], KEYS[2], ARGV[1], ARGV[2], KEYS[4], ARGV[5])
"#,
    )
});

/// No ARGV. The unexpired permits: `{owner, fence, ms left, 'p:<limit>', metadata}` for each,
/// flat.
pub static HOLDERS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = math.floor(now_us() / 1000)
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local role = 'p:' .. (redis.call('HGET', KEYS[2], 'limit') or '0')
local out = {}
for i = 1, #m, 2 do
  out[#out + 1] = m[i]
  out[#out + 1] = redis.call('HGET', KEYS[2], m[i]) or '0'
  out[#out + 1] = tostring(tonumber(m[i + 1]) - now)
  out[#out + 1] = role
  out[#out + 1] = redis.call('HGET', KEYS[2], 'm:' .. m[i]) or ''
end
return out
"#,
    )
});
