//! Moving a fleet from one backend to another without a window where two holders overlap.
//!
//! During the migration every process uses a [`MigrationBackend`]: it holds each lock on the
//! old backend and then on the new one. A process not yet migrated (old only) and one already
//! cut over (new only) are both excluded by it. See the playbook in the README.
//!
//! ```text
//! OLD_URL=redis://old:6379 NEW_URL=redlock://a,b,c cargo run -p distlock --example migration
//! cargo run -p distlock --example migration     # default: mem://old → file backend in a temp dir
//! ```

use std::time::Duration;

use distlock::migration::{MigrationBackend, Primary};

#[tokio::main(flavor = "current_thread")]
async fn main() -> distlock::Result<()> {
    let tmp = std::env::temp_dir().join(format!("distlock-migration-example-{}", std::process::id()));
    let old_url = std::env::var("OLD_URL").unwrap_or_else(|_| "mem://old".into());
    let new_url = std::env::var("NEW_URL").unwrap_or_else(|_| format!("file://{}", tmp.display()));
    let old = distlock::connect(&old_url).await?;
    let new = distlock::connect(&new_url).await?;

    // Phase 1 ("both"): every process holds locks on both; tokens still come from the old one.
    let both = MigrationBackend::client(&old, &new, Primary::Old, false)?;
    let g = both.lock("jobs/import").ttl(Duration::from_secs(30)).acquire().await?;
    println!("migrating process holds the lock (token {} from {})", g.fencing_token(), old.backend_name());
    println!("an old-only process gets it? {}", old.lock("jobs/import").try_acquire().await?.is_some());
    println!("a new-only process gets it? {}", new.lock("jobs/import").try_acquire().await?.is_some());
    g.release().await?;

    // Phase 2 (cut-over): once no process uses the old backend alone, switch to `new` alone.
    let g = new.lock("jobs/import").acquire().await?;
    println!("after cut-over, token {} from {}", g.fencing_token(), new.backend_name());
    g.release().await?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
