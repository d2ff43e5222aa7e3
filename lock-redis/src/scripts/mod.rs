//! The Lua scripts. Each runs atomically on one Redis node, by EVALSHA, reloaded on NOSCRIPT.
//!
//! Key layout for a lock whose full key is `K`, under the backend's prefix `P`:
//!
//! | Redis key | holds |
//! |---|---|
//! | `P{K}` | the grant: `"<owner token hex>:<fencing token>"`, then `"\n<metadata JSON>"` (the holder's metadata, see [`lock_core::Metadata`]), with the TTL as its expiry |
//! | `P{K}:fence` | the fencing counter: never expires, survives release and expiry |
//! | `P{K}:q` | the queue of waiters: a sorted set, member = a waiting acquire's owner token and its client's wake-up channel, score = when its registration lapses (ms, the server's `TIME`) |
//! | channel `P{K}:released` | wake-ups of an election's waiters and observers |
//! | channel `<prefix>wake:<client>` | one per client: `w:<owner>` wakes that waiter alone |
//!
//! **Waking one waiter.** A waiting acquire's failed attempt registers it in the queue (and
//! refreshes the registration: each poll does), a grant takes it out. A release takes the
//! live waiter whose registration lapses first out of the queue and publishes `w:<owner>` on
//! that waiter's client's own channel: only that waiter tries again, instead of every waiter
//! (a herd of failing scripts at each release), and only its client receives the message
//! (a per-name channel would deliver it to every subscribed client). A woken waiter that loses the race (another client's fresh attempt came first)
//! registers again; a waiter that gave up is taken out by its undo (the release script,
//! which finds no grant), or lapses. Nothing is published when nobody waits. Waiters that
//! were not woken still poll (every 250 ms at most, and at the holder's expiry), which also
//! covers a waiter that was woken and died, a holder that expired, and clients of an earlier
//! version, which do not register. An election keeps waking everyone (its observers listen
//! on its channel); Redlock does too (its masters' queues would pick different waiters).
//!
//! Both keys share the hash tag `{K}`, so Redis Cluster keeps them in one slot. A plain
//! `SET P{K} <value> NX PX <ttl>` client (for example redis-py's `Lock` on the name `P{K}`)
//! excludes us and is excluded by us; it does not bump the counter, and our release never
//! deletes its value.
//!
//! The semaphore and the read-write lock of the same name are other resources, under other
//! keys of the same hash tag: see [`semaphore`] and [`rwlock`]. The election of the name is
//! laid out as the lock, at `P{K}:elect` and `P{K}:elect:fence` (channel
//! `P{K}:elect:released`), with the same scripts: the leader's value is its metadata's, and
//! proclaim is [`SET_META`]. A multi-key lock takes the
//! locks of several names in one script ([`ACQUIRE_ALL`]).
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
//! Needs Redis 6.0 or later: scripts replicate their effects, so `TIME` is allowed (5.0), and
//! proclaim and the Redlock write-back keep a grant's TTL with `SET … KEEPTTL` (6.0).

use std::sync::LazyLock;

use redis::Script;

pub mod rwlock;
pub mod semaphore;

/// Lua functions every script starts with:
/// - `now_us()`: the server's clock (`TIME`) in microseconds, and `TIME`'s reply;
/// - `next_fence(counter, now_us, time)`: the next fencing token of `counter`,
///   `max(counter + 1, now_us)`, stored as the new counter (see the module docs); `INCR`
///   keeps the `+ 1` exact on counters beyond 2^53, and the result is the counter as stored;
///   `now_us` as a decimal string is made from `time` (the seconds, then the microseconds
///   padded to six digits), which costs the server less than `string.format` of the number;
/// - `raise(counter, f)`: raises `counter` to at least `f` (Redlock's write-back), comparing
///   the decimal strings (both without sign or leading zeros), so that counters beyond 2^53,
///   which Lua numbers cannot tell apart, are compared exactly;
/// - `prune(zset, hash, now_ms)`: drops the members of `zset` whose score (expiry, ms) is
///   past, and their fields in `hash` (token and metadata);
/// - `remember(hash, owner, meta)`: keeps a counted grant's metadata (`"\n<JSON>"`, or
///   nothing when empty) in `hash` under `m:<owner>`;
/// - `split_grant(value)`: a `"<owner>:<fence>[\n<JSON>]"` grant's fence and metadata part;
/// - `keep(ms, key…)`: makes each key live at least `ms` more (never shortens an expiry);
/// - `stay(zset, hash, owner, ttl)`: extends `owner`'s unexpired grant in a sorted set of
///   grants to `ttl` ms from now, keeping the set and `hash` alive as long; 1 if done;
/// - `queue_up(queue, member, now_ms, ms)`: registers a waiter in a primitive's queue of
///   waiters (a sorted set: member = `"<owner token> <its client's wake-up channel>"`, score
///   = when the registration lapses), dropping lapsed ones; every failed attempt of a waiting
///   acquire refreshes it;
/// - `next_waiter(queue)`: the waiter whose registration lapses first, among the live ones
///   (none without a queue);
/// - `wake(queue, member)`: takes the waiter out of the queue and wakes it alone (message
///   `w:<owner>` on its client's channel); nothing without one;
/// - `leave(zset, hash, owner, channel, queue, member)`: removes `owner`'s grant from a sorted
///   set of grants (a semaphore's permits, a read-write lock's readers) and its fields in
///   `hash`, drops `hash` with the last grant, wakes one waiter of `queue` (or, without a
///   queue, every waiter: message `released` on `channel`); 1 if the grant was there and
///   unexpired. Without the grant, takes `member` (the caller as a waiter) out of `queue`.
///
/// No function reads a key after it may have deleted it: on a Redis Cluster, a script that
/// touches a key that does not exist in a slot being migrated fails mid-way ("non local key"),
/// so `leave` deletes the set and the hash together with the last grant rather than checking
/// whether they emptied.
pub(crate) const PRELUDE: &str = r#"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]), t
end
local function next_fence(counter, now, t)
  if redis.call('INCR', counter) < now then
    local f = t[1] .. string.sub('00000' .. t[2], -6)
    redis.call('SET', counter, f)
    return f
  end
  return redis.call('GET', counter)
end
local function raise(counter, f)
  local last = redis.call('GET', counter) or '0'
  if #f > #last or (#f == #last and f > last) then redis.call('SET', counter, f) end
end
local function prune(zset, hash, now)
  local gone = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  for _, m in ipairs(gone) do redis.call('HDEL', hash, m, 'm:' .. m) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', zset, '-inf', now) end
end
local function remember(hash, owner, meta)
  if meta and meta ~= '' then redis.call('HSET', hash, 'm:' .. owner, meta) end
end
local function split_grant(cur)
  local rest = string.sub(cur, 34)
  local nl = string.find(rest, '\n', 1, true)
  if nl then return string.sub(rest, 1, nl - 1), string.sub(rest, nl) end
  return rest, ''
end
local function keep(ms, ...)
  for _, k in ipairs({...}) do
    if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, ms) end
  end
end
local function stay(zset, hash, owner, ttl)
  local now = math.floor(now_us() / 1000)
  local s = redis.call('ZSCORE', zset, owner)
  if s and tonumber(s) > now then
    redis.call('ZADD', zset, 'XX', now + ttl, owner)
    keep(ttl, zset, hash)
    return 1
  end
  return 0
end
local function queue_up(queue, member, now, ms)
  redis.call('ZREMRANGEBYSCORE', queue, '-inf', now)
  redis.call('ZADD', queue, now + ms, member)
  keep(ms, queue)
end
local function next_waiter(queue)
  if redis.call('EXISTS', queue) == 0 then return nil end
  local now = math.floor(now_us() / 1000)
  return redis.call('ZRANGEBYSCORE', queue, '(' .. now, '+inf', 'LIMIT', 0, 1)[1]
end
local function wake(queue, w)
  if w then
    redis.call('ZREM', queue, w)
    local sp = string.find(w, ' ', 1, true)
    if sp then redis.call('PUBLISH', string.sub(w, sp + 1), 'w:' .. string.sub(w, 1, sp - 1)) end
  end
end
local function leave(zset, hash, owner, channel, queue, member)
  local s = redis.call('ZSCORE', zset, owner)
  if not s then
    if queue then redis.call('ZREM', queue, member) end
    return 0
  end
  local w = queue and next_waiter(queue)
  if redis.call('ZCARD', zset) == 1 then
    redis.call('DEL', zset, hash)
  else
    redis.call('ZREM', zset, owner)
    redis.call('HDEL', hash, owner, 'm:' .. owner)
  end
  if queue then wake(queue, w) else redis.call('PUBLISH', channel, 'released') end
  if tonumber(s) > math.floor(now_us() / 1000) then return 1 end
  return 0
end
"#;

/// A script of `body` with the [`PRELUDE`]'s functions that it calls (directly or through
/// another of them) before it, in the prelude's order. Each `local function` is a closure the
/// server makes on every call of the script, so a script carries only what it uses (the full
/// prelude cost the acquire script about 3,300 more server instructions per call, counted
/// with callgrind).
pub(crate) fn script(body: &str) -> Script {
    Script::new(&with_prelude(body))
}

/// `body` with the prelude functions it needs before it.
fn with_prelude(body: &str) -> String {
    // The prelude's functions, each from its `local function` line to the next one.
    let starts: Vec<usize> = PRELUDE.match_indices("\nlocal function ").map(|(i, _)| i + 1).collect();
    let funcs: Vec<(&str, &str)> = starts
        .iter()
        .enumerate()
        .map(|(n, &a)| {
            let text = &PRELUDE[a..starts.get(n + 1).copied().unwrap_or(PRELUDE.len())];
            let name = text["local function ".len()..].split('(').next().unwrap_or("");
            (name, text)
        })
        .collect();
    let calls = |text: &str, name: &str| text.contains(&format!("{name}("));
    let mut needed = vec![false; funcs.len()];
    // A function may call only those before it, so one pass from the last backwards finds
    // every function needed, directly or not.
    for i in (0..funcs.len()).rev() {
        let (name, _) = funcs[i];
        needed[i] = calls(body, name)
            || funcs.iter().enumerate().skip(i + 1).any(|(j, (_, text))| needed[j] && calls(text, name));
    }
    let mut out = String::from("\n");
    for ((_, text), keep) in funcs.iter().zip(&needed) {
        if *keep {
            out.push_str(text);
        }
    }
    out.push_str(body);
    out
}

/// KEYS: lock, counter, and the queue of waiters (the lock's; none for an election). ARGV:
/// owner hex, ttl ms, (unused), metadata (`"\n<JSON>"`, or empty), a channel to announce a
/// new grant on (an election's, for its observers; empty: none), for a waiting acquire how
/// long its registration in the queue lasts (ms; empty: not waiting), and its entry there
/// (`"<owner hex> <wake-up channel>"`).
/// Returns `{1, fence}` when granted, `{0, pttl}` when held by someone else (a waiting
/// acquire is then registered in the queue, for [`RELEASE`] to wake it). A grant's fence is
/// `max(counter + 1, TIME in µs)` (see the module docs).
///
/// **A grant of ours already there** (a request sent again after its reply was lost, or a
/// grant that was undone and came back with a restored snapshot or a failover to a replica
/// that had it) is granted again with a new token, as every script of a grant does: the
/// caller never saw its token, which may be below tokens issued since.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('GET', KEYS[1])
local waits = KEYS[3] and ARGV[6] and ARGV[6] ~= ''
if cur and string.sub(cur, 1, 33) ~= ARGV[1] .. ':' then
  local left = tostring(redis.call('PTTL', KEYS[1]))
  if waits then queue_up(KEYS[3], ARGV[7], math.floor(now_us() / 1000), tonumber(ARGV[6])) end
  return {0, left}
end
if waits then redis.call('ZREM', KEYS[3], ARGV[7]) end
local f = next_fence(KEYS[2], now_us())
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. f .. (ARGV[4] or ''), 'PX', ARGV[2])
if ARGV[5] and ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], 'granted') end
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

/// Renewal in batches: many locks' [`EXTEND`] in one call. KEYS: the locks. ARGV: per key, its
/// owner hex and ttl ms, in turn (`owner1, ttl1, owner2, ttl2, …`). Returns one 1 (extended)
/// or 0 (not ours, or gone) per key, in order.
///
/// On Redis Cluster every key of one call must be in one hash slot, so a cluster's guards
/// renew one by one (the backend does not claim batched renewal there).
pub static EXTEND_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur and string.sub(cur, 1, 33) == ARGV[2 * i - 1] .. ':' then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#,
    )
});

/// KEYS: lock, counter, and the queue of waiters (none for an election). ARGV: owner hex,
/// channel, (unused), (unused), our entry in the queue as a waiter. Deletes our grant and
/// wakes one waiter of the queue (without a queue: every waiter, message `released` on the
/// channel). Returns 1 if released, 0 if not ours (or gone; our entry is then taken out of the
/// queue: a waiter that gave up).
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 33) == ARGV[1] .. ':' then
  local w = KEYS[3] and next_waiter(KEYS[3])
  redis.call('DEL', KEYS[1])
  if KEYS[3] then wake(KEYS[3], w) else redis.call('PUBLISH', ARGV[2], 'released') end
  return 1
end
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[5]) end
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
/// the grant (keeping its TTL and metadata). Returns 1 if done, 0 if the grant is gone.
pub static WRITE_BACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('GET', KEYS[1])
if not (cur and string.sub(cur, 1, 33) == ARGV[1] .. ':') then return 0 end
raise(KEYS[2], ARGV[2])
local meta = string.match(cur, '\n.*$') or ''
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2] .. meta, 'KEEPTTL')
return 1
"#,
    )
});

/// Raises a fencing counter (a migration's token carry-over). KEYS: counter. ARGV: at least.
/// Raises the counter to at least the value (never lowers it) and returns it as stored.
pub static RAISE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
raise(KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1]) or '0'
"#,
    )
});

/// Proclaim (and any rewrite of a grant's metadata). KEYS: lock. ARGV: owner hex, metadata
/// (`"\n<JSON>"`), a channel to announce it on (empty: none). If the grant is still ours,
/// replaces its metadata, keeping its token and TTL. Returns 1 if done, 0 if the grant is gone.
pub static SET_META: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if not (cur and string.sub(cur, 1, 33) == ARGV[1] .. ':') then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.match(cur, '^%d+', 34) .. ARGV[2], 'KEEPTTL')
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], 'proclaimed') end
return 1
"#,
    )
});

/// A multi-key lock in one step. KEYS: lock and counter of each name, in turn (`lock1,
/// counter1, lock2, counter2, …`). ARGV: owner hex, ttl ms, metadata (`"\n<JSON>"`, or empty).
/// Returns `{'1', fence1, fence2, …}` when every lock was free (or already ours) and is now
/// granted, each with a new token by the rule of [`ACQUIRE`] (a grant of ours already there
/// too, as there); `{'0', pttl}` when one is held by someone else, with nothing written.
///
/// On Redis Cluster every key of one call must be in one hash slot, so a cluster's multi-key
/// locks are taken one name at a time (the backend does not claim atomic multi-key there).
pub static ACQUIRE_ALL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local mine = ARGV[1] .. ':'
for i = 1, #KEYS, 2 do
  local cur = redis.call('GET', KEYS[i])
  if cur and string.sub(cur, 1, 33) ~= mine then
    return {'0', tostring(redis.call('PTTL', KEYS[i]))}
  end
end
local us, t = now_us()
local out = {'1'}
for i = 1, #KEYS, 2 do
  local f = next_fence(KEYS[i + 1], us, t)
  redis.call('SET', KEYS[i], mine .. f .. (ARGV[3] or ''), 'PX', ARGV[2])
  out[#out + 1] = f
end
return out
"#,
    )
});

#[cfg(test)]
mod prelude_tests {
    use super::*;

    /// A script carries the prelude functions it calls, those they call in turn, and no other.
    #[test]
    fn a_script_carries_only_the_prelude_it_uses() {
        let acquire = with_prelude("local f = next_fence(KEYS[2], now_us())");
        assert!(
            acquire.contains("local function now_us()") && acquire.contains("local function next_fence(")
        );
        assert!(!acquire.contains("local function leave(") && !acquire.contains("local function stay("));
        // `stay` calls `now_us` and `keep`; `leave` calls `now_us`.
        let stay = with_prelude("return stay(KEYS[1], KEYS[2], ARGV[1], ARGV[2])");
        for f in ["now_us", "keep", "stay"] {
            assert!(stay.contains(&format!("local function {f}(")), "{f} missing:\n{stay}");
        }
        assert!(!stay.contains("local function prune(") && !stay.contains("local function leave("));
        // Definitions come before their callers, as in the prelude.
        assert!(stay.find("local function now_us(") < stay.find("local function stay("));
        assert!(stay.find("local function keep(") < stay.find("local function stay("));
        // A body that calls nothing gets nothing.
        assert_eq!(with_prelude("return 1"), "\nreturn 1");
    }
}
