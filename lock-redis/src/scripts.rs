//! The Lua scripts. Each runs atomically on one Redis node, by EVALSHA, reloaded on NOSCRIPT.
//!
//! Key layout for a lock whose full key is `K`, under the backend's prefix `P`:
//!
//! | Redis key | holds |
//! |---|---|
//! | `P{K}` | the grant: `"<owner token hex>:<fencing token>"`, with the TTL as its expiry |
//! | `P{K}:fence` | the fencing counter: never expires, survives release and expiry |
//! | channel `P{K}:released` | one message per release, for waiters |
//!
//! Both keys share the hash tag `{K}`, so Redis Cluster keeps them in one slot. A plain
//! `SET P{K} <value> NX PX <ttl>` client (for example redis-py's `Lock` on the name `P{K}`)
//! excludes us and is excluded by us; it does not bump the counter, and our release never
//! deletes its value.
//!
//! ## Fencing tokens
//!
//! A grant's token is `max(counter + 1, the server's clock in microseconds)`, read from `TIME`
//! in the same script, and is stored as the new counter. Without a loss of data the `+ 1`
//! alone makes tokens strictly increase. The clock is there for when the server loses data:
//! a restart from an RDB snapshot older than the last writes (redis-server's default `save`
//! policy after a `kill -9`), AOF `everysec` losing its last second, a failover to a replica
//! that had not received the last writes. Then the counter comes back *older* (or missing)
//! and `counter + 1` would hand out tokens again; the clock does not.
//!
//! Why the clock is enough: let `C(t)` be the clock `TIME` reads when a grant runs. A token is
//! at most the clock of its grant: `T_n = max(T_(n-1) + 1, C(t_n))`, and if `T_(n-1) <=
//! C(t_(n-1)) < C(t_n)` then `T_n = C(t_n)`. Two grants of one key never fall in the same
//! microsecond (a release or an expiry comes between them, and each script runs for longer than
//! a microsecond). So every token issued before a crash is at most the clock at the last grant
//! before it, and the first grant after the restart gets at least the clock at that moment,
//! which is later. A counter that is ahead of the clock (one carried over from an earlier
//! version of this script, which also counted refused attempts, or one raised by Redlock's
//! write-back to another master's clock) keeps counting by `+ 1` and is caught up by the clock
//! after as many microseconds as it is ahead.
//!
//! **The assumption**: the server's clock (what `TIME` reads: the host's wall clock) never
//! steps back, and after a failover the new master's clock is not behind the old master's by
//! more than the time the failover took. A clock that steps back by `d` while the counter is
//! also lost can repeat the tokens of the last `d`. A clock that steps *forward* is harmless
//! to tokens but not to the locks: Redis keeps expiries as wall-clock times, so a forward step
//! ends every grant early and can let two holders in. Keep the server's clock slewed (NTP,
//! chrony), never stepped. For Redlock over several masters, see
//! [`RedlockBackend`](crate::RedlockBackend) for the skew between masters this needs.
//!
//! A refused attempt writes nothing: the counter rises only on grants (tokens are strictly
//! increasing, not dense).
//!
//! Needs Redis 5 or later (scripts replicate their effects, so `TIME` is allowed).

use std::sync::LazyLock;

use redis::Script;

/// KEYS: lock, counter. ARGV: owner hex, ttl ms.
/// Returns `{1, fence}` when granted (or already ours: a retried request whose reply was
/// lost; the TTL is refreshed and the grant keeps its token), `{0, pttl}` when held by someone
/// else. A grant's fence is `max(counter + 1, TIME in µs)` (see the module docs); `INCR`
/// keeps the `+ 1` exact on counters beyond 2^53, and the reply is the counter as stored.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 33) == ARGV[1] .. ':' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, string.sub(cur, 34)}
  end
  return {0, tostring(redis.call('PTTL', KEYS[1]))}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local f
if redis.call('INCR', KEYS[2]) < now then
  f = string.format('%.0f', now)
  redis.call('SET', KEYS[2], f)
else
  f = redis.call('GET', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. f, 'PX', ARGV[2])
return {1, f}
"#,
    )
});

/// KEYS: lock. ARGV: owner hex, ttl ms. Returns 1 if extended, 0 if not ours (or gone).
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 33) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// KEYS: lock. ARGV: owner hex, channel. Deletes our grant and wakes waiters.
/// Returns 1 if released, 0 if not ours (or gone).
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 33) == ARGV[1] .. ':' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"#,
    )
});

/// KEYS: lock. Returns `{value or '', pttl}`.
pub static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'', '-2'} end
return {v, tostring(redis.call('PTTL', KEYS[1]))}
"#,
    )
});

/// Redlock's write-back. KEYS: lock, counter. ARGV: owner hex, fence.
/// If the grant is still ours, raises the counter to at least `fence` and records `fence` in
/// the grant (keeping its TTL). Returns 1 if done, 0 if the grant is gone.
pub static WRITE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if not (cur and string.sub(cur, 1, 33) == ARGV[1] .. ':') then return 0 end
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if tonumber(ARGV[2]) > last then redis.call('SET', KEYS[2], ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'KEEPTTL')
return 1
"#,
    )
});
