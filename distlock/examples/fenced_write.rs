//! A fenced write: the resource rejects a token lower than one it has seen, so a holder that
//! stalled past its TTL cannot overwrite the work of the holder that came after it.
//!
//! ```text
//! cargo run -p distlock --example fenced_write
//! ```

use std::sync::Mutex;
use std::time::Duration;

/// A store that remembers the highest fencing token it accepted (Chubby's "sequencer").
#[derive(Default)]
struct FencedStore {
    inner: Mutex<(u64, String)>,
}

impl FencedStore {
    fn write(&self, token: u64, value: &str) -> Result<(), String> {
        let mut g = self.inner.lock().map_err(|_| "poisoned".to_owned())?;
        if token < g.0 {
            return Err(format!("rejected '{value}': token {token} is older than {}", g.0));
        }
        *g = (token, value.to_owned());
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> distlock::Result<()> {
    let url = std::env::var("DISTLOCK_URL").unwrap_or_else(|_| "mem://".into());
    let locks = distlock::connect(&url).await?;
    let store = FencedStore::default();

    // A takes the lock, then stalls (a GC pause, a partition) past its TTL.
    let a = locks.lock("accounts/42").ttl(Duration::from_secs(1)).acquire().await?.detach();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // B takes over with a higher token and writes.
    let b =
        locks.lock("accounts/42").ttl(Duration::from_secs(10)).wait(Duration::from_secs(5)).acquire().await?;
    println!("B: {:?}", store.write(b.fencing_token().get(), "balance=100 (B)"));

    // A wakes up and writes with its stale token: the store refuses.
    println!("A: {:?}", store.write(a.fencing_token().get(), "balance=0 (A, stale)"));
    assert!(store.write(a.fencing_token().get(), "stale").is_err());
    b.release().await?;
    Ok(())
}
