//! What a real redis-server says it has done, for tests that count requests.

/// How many scripts the server has run (EVALSHA and EVAL calls), from `INFO commandstats`.
pub async fn scripts_run(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(con).await.expect("info");
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}
