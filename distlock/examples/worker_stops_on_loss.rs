//! A worker that stops cleanly when its lock is lost.
//!
//! The work runs inside `run`: if the lock is lost (renewal finds it gone, the backend
//! session ends, or it expires), the work future is dropped at its next await point and the
//! worker gets `Error::Lost` instead of carrying on unprotected. Here an "operator" deletes
//! the grant after a second to show it.
//!
//! ```text
//! cargo run -p distlock --example worker_stops_on_loss
//! ```

use std::time::Duration;

use distlock::Error;

#[tokio::main]
async fn main() -> distlock::Result<()> {
    let url = std::env::var("DISTLOCK_URL").unwrap_or_else(|_| "mem://".into());
    let locks = distlock::connect(&url).await?;
    let operator = locks.clone();

    let result = locks
        .lock("workers/partition-7")
        .ttl(Duration::from_secs(2))
        .auto_renew()
        .run(|lease| async move {
            // Simulate an operator forcibly releasing this worker's lock after a second.
            let stolen = lease.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = operator.release_lease(&stolen).await;
            });
            let mut done = 0u64;
            loop {
                // One unit of work, fenced by the token.
                tokio::time::sleep(Duration::from_millis(100)).await;
                done += 1;
                println!("processed item {done} with token {}", lease.fencing_token());
            }
        })
        .await;
    match result {
        Err(Error::Lost { reason, .. }) => println!("lock lost ({reason}); stopped cleanly"),
        Err(e) => return Err(e),
        Ok(()) => unreachable!("the worker loops until it loses the lock"),
    }
    Ok(())
}
