//! The lock table: creating it (on-demand billing) and waiting until it is active.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use lock_core::{BackendErrorKind, Error, Instant, Result};

use crate::error::{self, NAME};
use crate::DynamoBackend;

impl DynamoBackend {
    /// Creates the lock table (on-demand billing) if it does not exist, and waits until it
    /// is active.
    ///
    /// # Errors
    /// Backend errors; a table that already exists is not one. A table that exists with
    /// other key attributes is not detected here; lock operations on it then fail.
    pub async fn create_table(&self) -> Result<()> {
        let o = &self.inner.opts;
        let def = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| Error::InvalidConfig(format!("table definition: {e}")))
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| Error::InvalidConfig(format!("table key: {e}")))
        };
        let mut req = self
            .inner
            .client
            .create_table()
            .table_name(&o.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(def(&o.partition_key)?)
            .key_schema(key(&o.partition_key, KeyType::Hash)?);
        if let Some(sk) = &o.sort_key {
            req = req.attribute_definitions(def(&sk.name)?).key_schema(key(&sk.name, KeyType::Range)?);
        }
        if let Err(e) = req.send().await {
            let exists = e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception());
            if !exists {
                return Err(error::sdk("CreateTable", &o.table, e));
            }
        }
        self.await_active_table().await
    }

    /// Waits (up to 120 s) until the table is active.
    async fn await_active_table(&self) -> Result<()> {
        let table = &self.inner.opts.table;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self
                .inner
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| error::sdk("DescribeTable", table, e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::backend_msg(
                    NAME,
                    BackendErrorKind::RequestTimedOut,
                    format!("table {table} did not become active in 120 s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
