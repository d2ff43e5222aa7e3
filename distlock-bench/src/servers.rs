//! Starts each backend's server with the conformance fixtures (or uses the one named by
//! `DISTLOCK_TEST_<BACKEND>_URL`) and assembles its contenders.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use conformance_tests::fixtures;
use lock_core::{LockBackend, LockClient};

use crate::contenders::{self as c, Factory, OursFactory};
use crate::Backend;

type Keep = Box<dyn Any + Send>;

/// The backend named `name` (`redis`, `etcd`, `zookeeper`, `dynamodb` on moto, `dynalite`:
/// DynamoDB on dynalite), and what keeps its servers running.
pub async fn start(name: &str) -> Result<(Backend, Keep)> {
    match name {
        "redis" => redis().await,
        "etcd" => etcd().await,
        "zookeeper" | "zk" => zookeeper().await,
        "dynamodb" | "dynamo" => {
            let t = fixtures::dynamo::DynamoTarget::get().await?;
            let url = t.url.clone();
            dynamodb(Emulator::Moto, url, Box::new(t)).await
        }
        "dynalite" => {
            let t = fixtures::dynamo::DynaliteServer::start().await?;
            let url = t.endpoint();
            dynamodb(Emulator::Dynalite, url, Box::new(t)).await
        }
        other => Err(anyhow!("unknown backend '{other}' (redis, etcd, zookeeper, dynamodb, dynalite)")),
    }
}

async fn redis() -> Result<(Backend, Keep)> {
    let t = fixtures::redis::RedisTarget::get().await?;
    // For the failover measurement only: Redlock over three masters of its own, and the file
    // backend in a directory of its own.
    let mut masters = Vec::new();
    for _ in 0..3 {
        masters.push(fixtures::redis::RedisServer::start().await?);
    }
    let redlock_url = format!(
        "redlock://{}",
        masters.iter().map(|m| format!("127.0.0.1:{}", m.port())).collect::<Vec<_>>().join(",")
    );
    let files = tempfile::tempdir()?;
    let url = t.url.clone();
    let u1 = url.clone();
    let ours: Arc<dyn Factory> = Arc::new(OursFactory(
        move || {
            let u = u1.clone();
            async move { Ok(LockClient::new(lock_redis::RedisBackend::connect(u.parse()?).await?)) }
        },
        "distlock RedisBackend (acquire script with fencing counter + compare-and-delete script)".into(),
    ));
    let u2 = url.clone();
    let u3 = url.clone();
    let b = Backend {
        name: "Redis (one node)",
        factories: vec![
            ours,
            Arc::new(c::RedisFloor { url: url.clone() }),
            Arc::new(c::RslockPeer { url: url.clone() }),
        ],
        ours: Arc::new(move || {
            let u = u2.clone();
            Box::pin(async move {
                Ok(Arc::new(lock_redis::RedisBackend::connect(u.parse()?).await?) as Arc<dyn LockBackend>)
            })
        }),
        server_requests: Some(Arc::new(move || {
            let u = u3.clone();
            Box::pin(async move {
                let client = redis::Client::open(u.as_str()).ok()?;
                let mut con = client.get_multiplexed_async_connection().await.ok()?;
                // Requests, not commands: `total_commands_processed` also counts every command a
                // script runs, so a renewal batch of 1,000 keys would count 2,000. The client
                // sends only these (everything else runs inside its scripts).
                const SENT: [&str; 10] = [
                    "evalsha",
                    "eval",
                    "scan",
                    "mget",
                    "ping",
                    "subscribe",
                    "unsubscribe",
                    "script",
                    "info",
                    "wait",
                ];
                let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.ok()?;
                Some(
                    info.lines()
                        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
                        .filter(|(name, _)| SENT.contains(name))
                        .filter_map(|(_, stats)| {
                            stats.split(',').find_map(|f| f.strip_prefix("calls="))?.parse::<u64>().ok()
                        })
                        .sum(),
                )
            })
        })),
        held_ttl: Duration::from_secs(3),
        notes: vec![],
        cap: None,
        requests_per_op: None,
        reach: vec![
            crate::failover::Reach { kind: "redis", target: url.clone() },
            crate::failover::Reach { kind: "redlock", target: redlock_url },
            crate::failover::Reach { kind: "file", target: files.path().display().to_string() },
        ],
        permit_floor: Some(crate::primitives::redis_floors(url.clone())),
        // The same scripts sent raw: `cargo bench -p lock-redis --bench primitives`.
        same_floor: None,
        permit_peer: Some(crate::primitives::redis_peer(url.clone())),
    };
    Ok((b, Box::new((t, masters, files))))
}

async fn etcd() -> Result<(Backend, Keep)> {
    let (eps, cluster) = fixtures::etcd::etcd_target(1).await?;
    let e1 = eps.clone();
    let ours: Arc<dyn Factory> = Arc::new(OursFactory(
        move || {
            let e = e1.clone();
            async move {
                Ok(LockClient::new(lock_etcd::EtcdBackend::connect(lock_etcd::EtcdOptions::new(&e)).await?))
            }
        },
        "distlock EtcdBackend, session lease (txn put + compare-and-delete)".into(),
    ));
    let (e2, e3) = (eps.clone(), eps.clone());
    let b = Backend {
        name: "etcd (one member)",
        factories: vec![
            ours,
            Arc::new(c::EtcdFloor { endpoints: eps.clone() }),
            Arc::new(c::EtcdPeer { endpoints: eps.clone() }),
        ],
        ours: Arc::new(move || {
            let e = e2.clone();
            Box::pin(async move {
                Ok(Arc::new(lock_etcd::EtcdBackend::connect(lock_etcd::EtcdOptions::new(&e)).await?)
                    as Arc<dyn LockBackend>)
            })
        }),
        server_requests: Some(Arc::new(move || {
            let e = e3[0].clone();
            Box::pin(async move { etcd_unary_requests(&e).await })
        })),
        held_ttl: Duration::from_secs(3),
        notes: vec![
            "session leases: a lock's TTL is the session's (10 s), renewed by one keep-alive stream".into()
        ],
        cap: None,
        requests_per_op: None,
        reach: vec![crate::failover::Reach { kind: "etcd", target: eps.join(",") }],
        permit_floor: Some(crate::primitives::etcd_floors(eps.clone())),
        // The same requests sent raw: `cargo bench -p lock-etcd --bench primitives`.
        same_floor: None,
        permit_peer: None,
    };
    Ok((b, Box::new(cluster)))
}

/// The sum of etcd's `grpc_server_handled_total` for unary calls (every KV, lease and
/// maintenance request), from its `/metrics` endpoint.
async fn etcd_unary_requests(endpoint: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let total = body
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total") && l.contains("grpc_type=\"unary\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Some(total as u64)
}

async fn zookeeper() -> Result<(Backend, Keep)> {
    let t = fixtures::zk::ZkTarget::get().await?;
    let connect = t.url.clone();
    let c1 = connect.clone();
    let ours: Arc<dyn Factory> = Arc::new(OursFactory(
        move || {
            let c = c1.clone();
            async move { Ok(LockClient::new(lock_zk::ZkBackend::connect(lock_zk::ZkOptions::new(c)).await?)) }
        },
        "distlock ZkBackend (create + getChildren + delete, Curator layout)".into(),
    ));
    let (c2, c3) = (connect.clone(), connect.clone());
    let b = Backend {
        name: "ZooKeeper (one server)",
        factories: vec![
            ours,
            Arc::new(c::ZkFloor { connect: connect.clone() }),
            Arc::new(c::ZkPeer { connect: connect.clone() }),
        ],
        ours: Arc::new(move || {
            let c = c2.clone();
            Box::pin(async move {
                Ok(Arc::new(lock_zk::ZkBackend::connect(lock_zk::ZkOptions::new(c)).await?) as Arc<dyn LockBackend>)
            })
        }),
        server_requests: Some(Arc::new(move || {
            let c = c3.split(',').next().unwrap_or("").to_owned();
            Box::pin(async move {
                let srvr = fixtures::zk::four_letter(&c, "srvr").await?;
                srvr.lines().find_map(|l| l.strip_prefix("Received:")).and_then(|v| v.trim().parse().ok())
            })
        })),
        held_ttl: Duration::from_secs(3),
        notes: vec!["session leases: a lock lasts as long as its session (10 s timeout); packets received include pings".into()],
        cap: None,
        requests_per_op: None,
        reach: vec![crate::failover::Reach { kind: "zookeeper", target: connect.clone() }],
        permit_floor: Some(crate::primitives::zk_floors(connect.clone())),
        same_floor: Some(crate::same::zk_same(connect.clone())),
        permit_peer: None,
    };
    Ok((b, Box::new(t)))
}

/// Counts the HTTP requests (attempts, retries included) a DynamoDB client sends.
#[derive(Debug)]
struct CountRequests(Arc<AtomicU64>);

impl aws_sdk_dynamodb::config::Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "distlock-bench-count-requests"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The table distlock's DynamoDB contender uses.
pub(crate) const DYNAMO_TABLE: &str = "bench_locks";

/// A DynamoDB client for the emulator at `endpoint` that counts its requests in `requests`.
pub(crate) fn dynamo_client(endpoint: &str, requests: Arc<AtomicU64>) -> aws_sdk_dynamodb::Client {
    dynamo_client_with(endpoint, CountRequests(requests))
}

/// A DynamoDB client for the emulator at `endpoint` with `interceptor`.
pub(crate) fn dynamo_client_with(
    endpoint: &str,
    interceptor: impl aws_sdk_dynamodb::config::Intercept + 'static,
) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "distlock-bench"))
        .interceptor(interceptor)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// Requests per uncontended acquire and per release, distlock beside the floor, counted at
/// the client (every HTTP attempt).
async fn dynamo_requests_per_op(
    client: aws_sdk_dynamodb::Client,
    requests: Arc<AtomicU64>,
    table: &'static str,
    peer: Arc<c::DynamoPeer>,
) -> Result<serde_json::Value> {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    let rounds = 50u64;
    let locks = LockClient::new(lock_dynamo::DynamoBackend::with_client(
        client.clone(),
        lock_dynamo::DynamoOptions::new(table),
    ));
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (mut ours_acq, mut ours_rel, mut floor_acq, mut floor_rel) = (0, 0, 0, 0);
    for i in 0..rounds {
        let key = format!("bench-ops/{tag}/{i}");
        let c0 = requests.load(Ordering::Relaxed);
        let g = locks.lock(&key).acquire().await?;
        let c1 = requests.load(Ordering::Relaxed);
        g.release().await?;
        let c2 = requests.load(Ordering::Relaxed);
        ours_acq += c1 - c0;
        ours_rel += c2 - c1;
        let fkey = format!("floor-ops/{tag}/{i}");
        let c0 = requests.load(Ordering::Relaxed);
        client
            .put_item()
            .table_name(table)
            .item("lock_key", V::S(fkey.clone()))
            .item("owner", V::S("o".into()))
            .condition_expression("attribute_not_exists(lock_key)")
            .send()
            .await?;
        let c1 = requests.load(Ordering::Relaxed);
        client
            .delete_item()
            .table_name(table)
            .key("lock_key", V::S(fkey))
            .condition_expression("#o = :o")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":o", V::S("o".into()))
            .send()
            .await?;
        let c2 = requests.load(Ordering::Relaxed);
        floor_acq += c1 - c0;
        floor_rel += c2 - c1;
    }
    let (mut peer_acq, mut peer_rel) = (0, 0);
    let p = peer.make().await?;
    for i in 0..rounds {
        let key = format!("peer-ops/{tag}/{i}");
        let c0 = peer.requests.load(Ordering::Relaxed);
        let held = p.lock_wait(&key).await?.context("the peer can wait")?;
        let c1 = peer.requests.load(Ordering::Relaxed);
        held.unlock().await?;
        let c2 = peer.requests.load(Ordering::Relaxed);
        peer_acq += c1 - c0;
        peer_rel += c2 - c1;
    }
    let per = |n: u64| n as f64 / rounds as f64;
    Ok(serde_json::json!({
        "rounds": rounds,
        "distlock": {"acquire": per(ours_acq), "release": per(ours_rel)},
        "floor": {"acquire": per(floor_acq), "release": per(floor_rel)},
        "peer": {"acquire": per(peer_acq), "release": per(peer_rel)},
    }))
}

/// The DynamoDB emulator a run measures on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emulator {
    /// moto's server: one request at a time, expressions parsed slowly.
    Moto,
    /// dynalite (Node.js): serves requests concurrently.
    Dynalite,
}

async fn dynamodb(emulator: Emulator, url: String, keep: Keep) -> Result<(Backend, Keep)> {
    let table = DYNAMO_TABLE;
    let requests = Arc::new(AtomicU64::new(0));
    let client = dynamo_client(&url, requests.clone());
    lock_dynamo::DynamoBackend::with_client(client.clone(), lock_dynamo::DynamoOptions::new(table))
        .create_table()
        .await?;
    // dynamodb_lock names its partition key `key` and keeps its own table.
    let peer_table = "bench_peer_locks";
    lock_dynamo::DynamoBackend::with_client(
        client.clone(),
        lock_dynamo::DynamoOptions::new(peer_table).partition_key("key"),
    )
    .create_table()
    .await?;
    let peer = Arc::new(c::DynamoPeer {
        endpoint: url.clone(),
        table: peer_table.into(),
        requests: Arc::new(AtomicU64::new(0)),
    });
    let (c1, c2) = (client.clone(), client.clone());
    let ours: Arc<dyn Factory> = Arc::new(OursFactory(
        move || {
            let c = c1.clone();
            async move {
                Ok(LockClient::new(lock_dynamo::DynamoBackend::with_client(
                    c,
                    lock_dynamo::DynamoOptions::new(table),
                )))
            }
        },
        "distlock DynamoBackend (conditional UpdateItem with fencing counter + conditional release)".into(),
    ));
    let peer_note = "peer: dynamodb_lock 0.6.1 (its last release, Nov 2023), built on rusoto 0.47, which is \
         deprecated; it still builds. Its acquire is a read then a conditional write (2 requests), and a waiter \
         polls every refresh_period (set to 100 ms, our default poll interval; its default is 10 s)"
        .to_owned();
    let (name, notes, cap) = match emulator {
        Emulator::Moto => (
            "DynamoDB (moto's emulator)",
            vec![
                peer_note,
                "moto serves one request at a time (see the fixture) at a few ms each: absolute numbers are the \
                 emulator's, not DynamoDB's, and the sizes are capped (300 latency rounds, 1,000 keys, 200 held \
                 locks)"
                    .into(),
                "moto's time per request grows with the expressions it parses: distlock's acquire and release \
                 are UpdateItems with conditions (the acquire also bumps the fencing counter; the release keeps \
                 the item and its counter): timed with boto3 against the same emulator, the acquire's costs it \
                 2.3x a conditional PutItem and the release's 1.5x a conditional DeleteItem, so here distlock's 2 \
                 requests per cycle take longer than the peer's 3. On DynamoDB a request costs about one network \
                 round trip whatever its expression: compare requests per operation"
                    .into(),
            ],
            crate::Cap { latency_rounds: 300, keys: 1_000, held: 200, waiters: 16 },
        ),
        Emulator::Dynalite => (
            "DynamoDB (dynalite)",
            vec![
                peer_note,
                "dynalite (npm, Node.js) serves requests concurrently, in memory (LevelDB in memory); it returns \
                 no item with a failed condition, so a refused acquire reads the item once (a consistent GetItem) \
                 to learn the holder's remaining lease: 2 requests per refused attempt here, 1 on DynamoDB. Sizes \
                 capped (1,000 latency rounds, 5,000 keys, 1,000 held locks)"
                    .into(),
            ],
            crate::Cap { latency_rounds: 1_000, keys: 5_000, held: 1_000, waiters: 64 },
        ),
    };
    let b = Backend {
        name,
        factories: vec![
            ours,
            Arc::new(c::DynamoFloor { client: client.clone(), table: table.into() }),
            peer.clone(),
        ],
        ours: Arc::new(move || {
            let c = c2.clone();
            Box::pin(async move {
                Ok(Arc::new(lock_dynamo::DynamoBackend::with_client(
                    c,
                    lock_dynamo::DynamoOptions::new(table),
                )) as Arc<dyn LockBackend>)
            })
        }),
        server_requests: None,
        held_ttl: Duration::from_secs(10),
        notes,
        cap: Some(cap),
        requests_per_op: Some({
            let (client, requests, peer) = (client.clone(), requests.clone(), peer.clone());
            Arc::new(move || {
                let (client, requests, peer) = (client.clone(), requests.clone(), peer.clone());
                Box::pin(async move { dynamo_requests_per_op(client, requests, table, peer).await })
            })
        }),
        reach: vec![crate::failover::Reach { kind: "dynamodb", target: url.clone() }],
        permit_floor: Some(crate::primitives::dynamo_floors(client.clone(), table.into())),
        same_floor: Some(crate::same::dynamo_same(url.clone(), table.into())),
        permit_peer: None,
    };
    Ok((b, keep))
}
