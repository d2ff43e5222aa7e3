//! The read-write lock's scripts.
//!
//! Key layout for the read-write lock whose full key is `K`, under the backend's prefix `P`
//! (the same hash tag as the lock `K`, different keys: independent of the lock and the
//! semaphore of that name):
//!
//! | Redis key | holds |
//! |---|---|
//! | `P{K}:rw:writer` | the writer's grant, `"<owner token hex>:<fencing token>"` then its metadata (`"\n<JSON>"`), with the TTL as its expiry (as a lock's) |
//! | `P{K}:rw:readers` | sorted set of the readers: member = owner token, score = expiry (ms, the server's `TIME`) |
//! | `P{K}:rw:tokens` | hash: reader's owner token → its fencing token; `m:<owner>` → the reader's metadata |
//! | `P{K}:rw:intents` | sorted set of the waiting writers: member = owner token, score = when the intent lapses (ms) |
//! | `P{K}:rw:fence` | the fencing counter, one for readers and writers: never expires |
//! | channel `P{K}:rw:released` | one message per release (and per withdrawn intent), for waiters |
//!
//! **Writer preference**: a writer that waits leaves an *intent*, refreshed by each of its
//! attempts; a reader is refused while any unexpired intent exists, so a stream of readers
//! cannot starve a writer. An intent lapses on its own unless refreshed (a writer that died
//! while waiting blocks readers no longer than that), and is withdrawn when the writer is
//! granted, or gives up (its release by owner token removes it).
//!
//! **Fencing**: every grant, reader or writer, takes `max(counter + 1, TIME in µs)` from the
//! one counter, so a writer's token is above every earlier grant's and a reader's above the
//! last writer's.
//!
//! Every script takes the five keys, in that order. The role argument is `r` or `w`.

use std::sync::LazyLock;

use redis::Script;

use super::script;

/// ARGV: owner hex, ttl ms, (unused), the reader's metadata (`"\n<JSON>"` or empty). Returns
/// `{1, fence}` when granted (or already ours: granted again with a new token, as the lock's
/// [`ACQUIRE`](super::ACQUIRE) does); `{0, ms}` while a writer holds it or a writer waits
/// (`ms`: until that grant or intent runs out).
pub static ACQUIRE_READ: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local us, t = now_us()
local now = math.floor(us / 1000)
local ttl = tonumber(ARGV[2])
prune(KEYS[2], KEYS[3], now)
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  local w = redis.call('PTTL', KEYS[1])
  if w ~= -2 then return {0, tostring(w)} end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if #first > 0 then return {0, tostring(tonumber(first[2]) - now)} end
end
local f = next_fence(KEYS[5], us, t)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], f)
remember(KEYS[3], ARGV[1], ARGV[4])
keep(ttl, KEYS[2], KEYS[3])
return {1, f}
"#,
    )
});

/// ARGV: owner hex, ttl ms, intent ms (0: none), the writer's metadata (`"\n<JSON>"` or
/// empty, kept in the grant's value after the token). Returns `{1, fence}` when granted (or
/// already ours: granted again with a new token), withdrawing our intent; `{0, ms}` while a reader or another writer holds it
/// (`ms`: until the first of them runs out), leaving or refreshing our intent for `intent ms`
/// when it is not 0 (a waiting writer).
pub static ACQUIRE_WRITE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local us, t = now_us()
local now = math.floor(us / 1000)
local ttl = tonumber(ARGV[2])
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 33) == ARGV[1] .. ':' then cur = nil end
prune(KEYS[2], KEYS[3], now)
local wait
if cur then
  wait = redis.call('PTTL', KEYS[1])
else
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #first > 0 then wait = tonumber(first[2]) - now end
end
if wait then
  local intent = tonumber(ARGV[3])
  if intent > 0 then
    redis.call('ZADD', KEYS[4], now + intent, ARGV[1])
    keep(intent, KEYS[4])
  end
  return {0, tostring(wait)}
end
local f = next_fence(KEYS[5], us, t)
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. f .. (ARGV[4] or ''), 'PX', ttl)
redis.call('ZREM', KEYS[4], ARGV[1])
return {1, f}
"#,
    )
});

/// ARGV: owner hex, ttl ms, role. Extends our unexpired grant; 1 if done, 0 if gone.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ttl = tonumber(ARGV[2])
if ARGV[3] == 'w' then
  local cur = redis.call('GET', KEYS[1])
  if cur and string.sub(cur, 1, 33) == ARGV[1] .. ':' then
    redis.call('PEXPIRE', KEYS[1], ttl)
    return 1
  end
  return 0
end
return stay(KEYS[2], KEYS[3], ARGV[1], ttl)
"#,
    )
});

/// ARGV: owner hex, channel, role, keep. Removes our grant (a writer's intent too, unless
/// `keep` is `1`: the undo of one Redlock round of a writer that goes on waiting) and wakes
/// waiters; 1 if an unexpired grant was removed, 0 otherwise.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if ARGV[3] == 'w' then
  local done = 0
  local cur = redis.call('GET', KEYS[1])
  if cur and string.sub(cur, 1, 33) == ARGV[1] .. ':' then
    redis.call('DEL', KEYS[1])
    done = 1
  end
  local withdrawn = 0
  if ARGV[4] ~= '1' then withdrawn = redis.call('ZREM', KEYS[4], ARGV[1]) end
  if withdrawn + done > 0 then
    redis.call('PUBLISH', ARGV[2], 'released')
  end
  return done
end
return leave(KEYS[2], KEYS[3], ARGV[1], ARGV[2])
"#,
    )
});

/// No ARGV. The writer and the unexpired readers: `{owner, fence, ms left, 'w' or 'r',
/// metadata}` for each, flat.
pub static HOLDERS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = math.floor(now_us() / 1000)
local out = {}
local cur = redis.call('GET', KEYS[1])
if cur then
  local fence, meta = split_grant(cur)
  out = {string.sub(cur, 1, 32), fence, tostring(redis.call('PTTL', KEYS[1])), 'w', meta}
end
local m = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #m, 2 do
  out[#out + 1] = m[i]
  out[#out + 1] = redis.call('HGET', KEYS[3], m[i]) or '0'
  out[#out + 1] = tostring(tonumber(m[i + 1]) - now)
  out[#out + 1] = 'r'
  out[#out + 1] = redis.call('HGET', KEYS[3], 'm:' .. m[i]) or ''
end
return out
"#,
    )
});

/// Redlock's write-back. ARGV: owner hex, fence, role. If our grant is still there, records
/// `fence` as its token and raises the counter to at least `fence`; 1 if done, 0 if gone.
pub static WRITE_BACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if ARGV[3] == 'w' then
  local cur = redis.call('GET', KEYS[1])
  if not (cur and string.sub(cur, 1, 33) == ARGV[1] .. ':') then return 0 end
  local _, meta = split_grant(cur)
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2] .. meta, 'KEEPTTL')
else
  if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
raise(KEYS[5], ARGV[2])
return 1
"#,
    )
});
