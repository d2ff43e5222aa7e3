//! The lock a command takes: `--lock` (once, or several times for a multi-key lock),
//! `--permits N` (a semaphore), `--read` / `--write` (a read-write lock), `--ttl`, `--wait`,
//! `--value` (shared by `run` and `acquire`).

use std::time::Duration;

use distlock::{Error, FencingToken, Guard, LockClient, Result};

/// Parses a duration as people write it (`30s`, `500ms`, `2m`).
pub(crate) fn duration(s: &str) -> std::result::Result<Duration, String> {
    distlock::parse_duration(s)
}

/// `--lock NAME [--lock NAME…] [--permits N | --read | --write] [--ttl 30s] [--wait 0s] [--value V]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Take {
    /// The lock's name; give it several times to take every name, all or nothing.
    #[arg(long = "lock", required = true)]
    pub(crate) locks: Vec<String>,
    /// Take one of N permits of the semaphore NAME (at most N holders at once).
    #[arg(long, conflicts_with_all = ["read", "write"])]
    pub(crate) permits: Option<u32>,
    /// Take the read side of the read-write lock NAME (shared with other readers).
    #[arg(long, conflicts_with = "write")]
    pub(crate) read: bool,
    /// Take the write side of the read-write lock NAME (alone).
    #[arg(long)]
    pub(crate) write: bool,
    /// Lease TTL; a crashed holder blocks others for at most this long (default: the URL's
    /// `ttl=`, else 30s).
    #[arg(long, value_parser = duration)]
    pub(crate) ttl: Option<Duration>,
    /// How long to wait for the lock (0: one attempt).
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub(crate) wait: Duration,
    /// A value stored with the grant's holder metadata (shown by `inspect` and `list`).
    #[arg(long)]
    pub(crate) value: Option<String>,
}

/// What was taken: the guard, and each name's fencing token.
pub(crate) struct Taken {
    pub(crate) guard: Guard,
    pub(crate) tokens: Vec<(String, FencingToken)>,
}

/// Each name's fencing token as one JSON object (`{"name": token, …}`).
pub(crate) fn tokens_json(tokens: &[(String, FencingToken)]) -> serde_json::Value {
    tokens.iter().map(|(k, t)| (k.clone(), serde_json::json!(t.get()))).collect()
}

impl Take {
    /// A label for messages: the name, or the names.
    pub(crate) fn label(&self) -> String {
        self.locks.join("', '")
    }

    /// Takes what these options describe, renewing it if `auto_renew`.
    ///
    /// # Errors
    /// `InvalidConfig` for a semaphore or read-write lock over several names; the acquire's.
    pub(crate) async fn acquire(&self, locks: &LockClient, auto_renew: bool) -> Result<Taken> {
        if self.locks.len() > 1 {
            if self.permits.is_some() || self.read || self.write {
                return Err(Error::InvalidConfig(
                    "--permits, --read and --write take one --lock; several --lock names make a multi-key lock".into(),
                ));
            }
            let mut b = locks.lock_all(&self.locks).wait(self.wait);
            if let Some(t) = self.ttl {
                b = b.ttl(t);
            }
            if let Some(v) = &self.value {
                b = b.value(v.clone());
            }
            if auto_renew {
                b = b.auto_renew();
            }
            let g = b.acquire().await?;
            let tokens = g.fencing_tokens().to_vec();
            return Ok(Taken { guard: g.into_guard(), tokens });
        }
        let name = &self.locks[0];
        let mut b = match (self.permits, self.read, self.write) {
            (Some(n), _, _) => locks.semaphore(name, n),
            (None, true, _) => locks.read_lock(name),
            (None, false, true) => locks.write_lock(name),
            (None, false, false) => locks.lock(name),
        }
        .wait(self.wait);
        if let Some(t) = self.ttl {
            b = b.ttl(t);
        }
        if let Some(v) = &self.value {
            b = b.value(v.clone());
        }
        if auto_renew {
            b = b.auto_renew();
        }
        let guard = b.acquire().await?;
        let tokens = vec![(guard.key().to_owned(), guard.fencing_token())];
        Ok(Taken { guard, tokens })
    }
}
