//! What the lock-dynamo tests share: a client for a test endpoint with throwaway credentials
//! (so the default chain never looks for real ones, or at instance metadata).

#![allow(dead_code)]

pub mod proxy;

use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use lock_dynamo::{DynamoBackend, DynamoOptions};

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
