//! What the lock-dynamo tests share: the two emulators every test runs on (moto's server,
//! serving one request at a time, and dynalite, serving them concurrently and without
//! returning the item of a failed condition or offering transactions), a client for a test
//! endpoint with throwaway credentials (so the default chain never looks for real ones, or at
//! instance metadata), and [`on_each_emulator!`], which makes one test per emulator.

#![allow(dead_code)]

pub mod proxy;

use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use conformance_tests::fixtures::dynamo::{DynaliteServer, MotoServer};
use conformance_tests::fixtures::Target;
use lock_dynamo::{DynamoBackend, DynamoOptions};

/// Which emulator a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    /// moto's server (or `DISTLOCK_TEST_DYNAMODB_URL`).
    Moto,
    /// dynalite (or `DISTLOCK_TEST_DYNALITE_URL`).
    Dynalite,
}

/// A running emulator: its endpoint, and the server kept alive while this lives.
pub struct Emu {
    pub endpoint: String,
    pub kind: Emulator,
    _server: Box<dyn std::any::Any + Send + Sync>,
}

impl Emulator {
    /// The configured endpoint of this emulator, or a fresh server.
    pub async fn start(self) -> Emu {
        match self {
            Emulator::Moto => {
                let t = Target::<MotoServer>::get().await.expect("moto (DynamoDB emulator)");
                Emu { endpoint: t.url.clone(), kind: self, _server: Box::new(t) }
            }
            Emulator::Dynalite => {
                let t = Target::<DynaliteServer>::get().await.expect("dynalite (DynamoDB emulator)");
                Emu { endpoint: t.url.clone(), kind: self, _server: Box::new(t) }
            }
        }
    }

    /// The emulator with the table of `opts` created.
    pub async fn with_table(self, opts: &DynamoOptions) -> Emu {
        let emu = self.start().await;
        backend(&emu.endpoint, opts.clone()).await;
        emu
    }
}

/// One test per emulator: `on_each_emulator!(a, b)` makes `moto::a`, `dynalite::a`, … each
/// calling `a(Emulator::…)` on a two-thread runtime.
#[macro_export]
macro_rules! on_each_emulator {
    ($($name:ident),* $(,)?) => {
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Emulator::Moto).await
                }
            )*
        }
        mod dynalite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Emulator::Dynalite).await
                }
            )*
        }
    };
}

/// An SDK client for `endpoint` with throwaway credentials, fast retries and a 5 s attempt
/// limit.
pub fn client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    client_with_attempt_timeout(endpoint, Duration::from_secs(5))
}

/// An SDK client for `endpoint` with throwaway credentials, three attempts with fast retries,
/// and the time limit `attempt` on each.
pub fn client_with_attempt_timeout(endpoint: &str, attempt: Duration) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "distlock-tests"))
        .retry_config(
            aws_sdk_dynamodb::config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(20)),
        )
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(attempt)
                .build(),
        )
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// A backend on `table` at `endpoint`, with the table created.
pub async fn backend(endpoint: &str, opts: DynamoOptions) -> DynamoBackend {
    let b = DynamoBackend::with_client(client(endpoint), opts);
    b.create_table().await.expect("create the lock table");
    b
}

/// A lock client on `endpoint` (the table must exist).
pub fn locks(endpoint: &str, opts: DynamoOptions) -> lock_core::LockClient {
    lock_core::LockClient::new(DynamoBackend::with_client(client(endpoint), opts))
}

/// A key no other test uses.
pub fn key(test: &str, name: &str) -> String {
    format!("{test}/{}/{name}", uuid::Uuid::new_v4().simple())
}
