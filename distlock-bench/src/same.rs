//! The floor the semaphore target is set against: **the same requests distlock sends** for one
//! uncontended permit, sent raw with the same client crate (issue 15 item 9), so the ratio is
//! distlock's own cost, not the cost of its layout.
//!
//! - **ZooKeeper**: the requests of lock-zk's permit in Curator's `InterProcessSemaphoreV2`
//!   layout, written out: create the mutex node under `locks`, list `locks`, read the
//!   semaphore's node (the number of permits), create the lease node with the holder's
//!   metadata, list and watch `leases`, delete the mutex node; the release deletes the lease
//!   node. Seven requests.
//! - **DynamoDB**: recorded, not written out. The first cycle on a name takes and gives back
//!   one permit through distlock on a client whose interceptor keeps every request's input;
//!   each cycle then sends those inputs again (the same `UpdateItem`s, expressions, names and
//!   values, as the benchmark's own acquire sends them) with the same SDK client. A permit
//!   given back leaves the item as it found it, so the recorded grant applies again.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
use lock_core::{LockClient, Metadata};

use crate::contenders::zk_create_sequential;
use crate::primitives::{our_permit, PermitFloor, PermitFloors};

/// ZooKeeper: lock-zk's requests for one permit, in its order.
struct ZkSame(zookeeper_client::Client);

#[async_trait]
impl PermitFloor for ZkSame {
    async fn cycle(&self, name: &str, n: u32) -> Result<bool> {
        use zookeeper_client::CreateMode::Container;
        let sem = format!("/bench/same_{}#semaphore", name.replace('/', "_"));
        let (locks, leases) = (format!("{sem}/locks"), format!("{sem}/leases"));
        let id = uuid::Uuid::new_v4().hyphenated();
        // Directories are containers, as lock-zk makes them.
        let create = |dir: String, stem: String, data: Vec<u8>| async move {
            let made = zk_create_sequential(&self.0, &dir, &stem, &data, Container).await?;
            anyhow::Ok(format!("{dir}/{stem}{}", made.1))
        };
        let mutex = create(locks.clone(), format!("_c_{id}-lock-"), Vec::new()).await?;
        self.0.list_children(&locks).await?;
        self.0.get_data(&sem).await?;
        let meta = Metadata::current().encode().into_bytes();
        let lease = create(leases.clone(), format!("_c_{id}-lease-"), meta).await?;
        let (names, _watch) = self.0.list_and_watch_children(&leases).await?;
        self.0.delete(&mutex, None).await?;
        self.0.delete(&lease, None).await?;
        Ok(names.len() <= n as usize)
    }
}

pub(crate) fn zk_same(connect: String) -> PermitFloors {
    PermitFloors {
        what: "lock-zk's seven requests (create + list under locks, getData, create under leases, \
               list+watch leases, two deletes), raw with zookeeper-client",
        make: Arc::new(move || {
            let c = connect.clone();
            Box::pin(async move {
                Ok(Arc::new(ZkSame(zookeeper_client::Client::connect(&c).await?)) as Arc<dyn PermitFloor>)
            })
        }),
    }
}

/// What the recording interceptor saw: `UpdateItem` inputs, or the name of another request.
#[derive(Debug, Clone)]
enum Seen {
    Update(Box<UpdateItemInput>),
    Other(String),
}

/// Keeps the input of every request while `on`.
#[derive(Debug, Default)]
struct Recorder {
    on: Mutex<Option<Vec<Seen>>>,
}

#[derive(Debug)]
struct Record(Arc<Recorder>);

impl aws_sdk_dynamodb::config::Intercept for Record {
    fn name(&self) -> &'static str {
        "distlock-bench-record-inputs"
    }

    fn read_before_execution(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        if let Some(seen) = self.0.on.lock().map_err(|_| "recorder poisoned")?.as_mut() {
            let input = context.input();
            seen.push(match input.downcast_ref::<UpdateItemInput>() {
                Some(u) => Seen::Update(Box::new(u.clone())),
                None => Seen::Other(format!("{input:?}").chars().take(60).collect()),
            });
        }
        Ok(())
    }
}

/// DynamoDB: distlock's recorded requests for one permit of each name, sent again.
struct DynamoSame {
    client: aws_sdk_dynamodb::Client,
    locks: LockClient,
    recorder: Arc<Recorder>,
    recorded: Mutex<std::collections::HashMap<(String, u32), Vec<UpdateItemInput>>>,
}

impl DynamoSame {
    /// distlock's requests for one uncontended permit of `name` (after one unrecorded round,
    /// so one-time work is not among them), taken as the benchmark takes it (`our_permit`):
    /// one grant and one release.
    async fn record(&self, name: &str, n: u32) -> Result<Vec<UpdateItemInput>> {
        let round = || our_permit(&self.locks, name, n);
        round().await?;
        *self.recorder.on.lock().map_err(|_| anyhow::anyhow!("recorder poisoned"))? = Some(Vec::new());
        let done = round().await;
        let seen = self.recorder.on.lock().map_err(|_| anyhow::anyhow!("recorder poisoned"))?.take();
        done?;
        let mut inputs = Vec::new();
        for s in seen.unwrap_or_default() {
            match s {
                Seen::Update(u) => inputs.push(*u),
                Seen::Other(what) => {
                    bail!("an uncontended permit sent a request other than UpdateItem: {what}")
                }
            }
        }
        anyhow::ensure!(
            inputs.len() == 2,
            "an uncontended permit sent {} requests, not a grant and a release",
            inputs.len()
        );
        Ok(inputs)
    }
}

#[async_trait]
impl PermitFloor for DynamoSame {
    async fn cycle(&self, name: &str, n: u32) -> Result<bool> {
        let key = (name.to_owned(), n);
        let known = self.recorded.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.get(&key).cloned();
        let inputs = match known {
            Some(i) => i,
            None => {
                let i = self.record(name, n).await?;
                self.recorded.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(key, i.clone());
                i
            }
        };
        for u in inputs {
            let sent = self
                .client
                .update_item()
                .set_table_name(u.table_name)
                .set_key(u.key)
                .set_update_expression(u.update_expression)
                .set_condition_expression(u.condition_expression)
                .set_expression_attribute_names(u.expression_attribute_names)
                .set_expression_attribute_values(u.expression_attribute_values)
                .set_return_values(u.return_values)
                .set_return_values_on_condition_check_failure(u.return_values_on_condition_check_failure)
                .send()
                .await;
            // On an idle semaphore of its own the recorded grant always applies again: a refusal
            // means the recording does not, and is an error rather than "no permit free" (which
            // the caller would retry forever).
            sent.context("replaying distlock's recorded request")?;
        }
        Ok(true)
    }
}

pub(crate) fn dynamo_same(endpoint: String, table: String) -> PermitFloors {
    PermitFloors {
        what: "distlock's own UpdateItem requests, recorded once and sent again (aws-sdk-dynamodb)",
        make: Arc::new(move || {
            let (endpoint, table) = (endpoint.clone(), table.clone());
            Box::pin(async move {
                let recorder = Arc::new(Recorder::default());
                let client = crate::servers::dynamo_client_with(&endpoint, Record(recorder.clone()));
                let backend = lock_dynamo::DynamoBackend::with_client(
                    client.clone(),
                    lock_dynamo::DynamoOptions::new(&table),
                );
                Ok(Arc::new(DynamoSame {
                    client,
                    locks: LockClient::new(backend),
                    recorder,
                    recorded: Mutex::default(),
                }) as Arc<dyn PermitFloor>)
            })
        }),
    }
}
