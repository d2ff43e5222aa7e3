//! The lock a command takes: `--lock`, `--ttl`, `--wait` (shared by `run` and `acquire`).

use std::time::Duration;

use distlock::LockClient;

/// Parses a duration as people write it (`30s`, `500ms`, `2m`).
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    distlock::parse_duration(s)
}

/// `--lock NAME [--ttl 30s] [--wait 0s]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Take {
    /// The lock's name.
    #[arg(long)]
    pub(crate) lock: String,
    /// Lease TTL; a crashed holder blocks others for at most this long.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub(crate) ttl: Duration,
    /// How long to wait for the lock (0: one attempt).
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub(crate) wait: Duration,
}

impl Take {
    /// The lock builder these options describe.
    pub(crate) fn builder(&self, locks: &LockClient) -> distlock::LockBuilder {
        locks.lock(&self.lock).ttl(self.ttl).wait(self.wait)
    }
}
