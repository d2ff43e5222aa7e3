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
//! Fencing tokens come from `INCR` on the counter. When the counter is missing (first use, or
//! a restart or failover that lost it) the token starts from the server's clock in
//! microseconds instead of 1: every earlier token is at most "clock when the counter started"
//! plus one per grant since, and a grant takes well over a microsecond, so tokens keep rising
//! across such a loss as long as the server's clock does not go back.
//!
//! Needs Redis 5 or later (scripts replicate their effects, so `TIME` is allowed).

use std::sync::LazyLock;

use redis::Script;

/// KEYS: lock, counter. ARGV: owner hex, ttl ms.
/// Returns `{1, fence}` when granted (or already ours: a retried request whose reply was
/// lost; the TTL is refreshed), `{0, pttl}` when held by someone else. The counter also rises
/// on refused attempts: tokens are strictly increasing, not dense.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('INCR', KEYS[2])
if f == 1 then
  local t = redis.call('TIME')
  f = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('SET', KEYS[2], string.format('%.0f', f))
end
f = string.format('%.0f', f)
if redis.call('SET', KEYS[1], ARGV[1] .. ':' .. f, 'NX', 'PX', ARGV[2]) then
  return {1, f}
end
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 33) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, string.sub(cur, 34)}
end
return {0, tostring(redis.call('PTTL', KEYS[1]))}
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
