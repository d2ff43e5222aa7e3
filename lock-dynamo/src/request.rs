//! The requests on an item: the conditional `UpdateItem` every write is, with its attribute
//! names and values resolved from the expressions, and the strongly consistent read.
//!
//! A failed condition returns the item as it was (`ReturnValuesOnConditionCheckFailure`), so
//! a refusal costs no extra request; a server that does not return it (dynalite, DynamoDB
//! Local before 2023) costs one consistent `GetItem` instead.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use lock_core::{BackendErrorKind, Error, Instant, Result};

use crate::error::{self, protocol, NAME};
use crate::item::{self, Item};
use crate::DynamoBackend;

/// What a conditional write found.
pub(crate) enum Written {
    /// Applied; the attributes it was asked to return.
    Applied(Item),
    /// The condition failed; the item as it is (`None`: there is no item).
    Refused(Option<Item>),
}

/// The attribute names every expression may use by alias.
const ALIASES: &[(&str, &str)] = &[
    ("#o", item::OWNER),
    ("#v", item::RVN),
    ("#f", item::FENCE),
    ("#l", item::LEASE_MS),
    ("#e", item::EXPIRES_MS),
    ("#r", item::RELEASE_RVN),
    ("#m", item::META),
    ("#n", item::COUNT),
    ("#lim", item::LIMIT),
    ("#w", item::WRITER),
    ("#wf", item::WRITER_FENCE),
    ("#i", item::INTENT),
    ("#ko", item::E_OWNER),
    ("#kr", item::E_RVN),
    ("#kl", item::E_LEASE),
    ("#ke", item::E_EXPIRES),
    ("#km", item::E_META),
];

/// One conditional `UpdateItem`: what it is called in errors, its update and condition
/// expressions, the attribute names it uses beyond [`ALIASES`], the values, and what it
/// returns when applied. Only the names and values the expressions use are sent.
pub(crate) struct Update {
    pub(crate) op: &'static str,
    pub(crate) expression: String,
    pub(crate) condition: String,
    pub(crate) names: Vec<(String, String)>,
    pub(crate) values: Vec<(String, AttributeValue)>,
    pub(crate) returns: ReturnValue,
    /// Whether a refusal needs the item (read when the server does not return it).
    pub(crate) need_item: bool,
}

impl Update {
    /// An update with no names, values or return values yet.
    pub(crate) fn new(op: &'static str, expression: impl Into<String>, condition: impl Into<String>) -> Self {
        Self {
            op,
            expression: expression.into(),
            condition: condition.into(),
            names: Vec::new(),
            values: Vec::new(),
            returns: ReturnValue::None,
            need_item: true,
        }
    }

    /// A refusal needs no item: it is not read when the server does not return it.
    pub(crate) fn without_item(mut self) -> Self {
        self.need_item = false;
        self
    }

    /// Adds a value.
    pub(crate) fn value(mut self, alias: &str, v: AttributeValue) -> Self {
        self.values.push((alias.to_owned(), v));
        self
    }

    /// Adds an attribute name alias.
    pub(crate) fn name(mut self, alias: &str, attr: &str) -> Self {
        self.names.push((alias.to_owned(), attr.to_owned()));
        self
    }

    /// Sets what it returns when applied.
    pub(crate) fn returning(mut self, r: ReturnValue) -> Self {
        self.returns = r;
        self
    }

    /// The `#alias` → name and `:alias` → value maps of the tokens the expressions use.
    ///
    /// # Errors
    /// A protocol error naming a token that has no name or value (a bug of this crate).
    pub(crate) fn resolve(&self) -> Result<(HashMap<String, String>, HashMap<String, AttributeValue>)> {
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for text in [&self.expression, &self.condition] {
            for tok in tokens(text, '#') {
                let found = self.names.iter().find(|(a, _)| a == tok).map(|(_, n)| n.as_str());
                let found = found.or_else(|| ALIASES.iter().find(|(a, _)| *a == tok).map(|(_, n)| *n));
                let name =
                    found.ok_or_else(|| protocol(format!("{}: no attribute name for {tok}", self.op)))?;
                names.insert(tok.to_owned(), name.to_owned());
            }
            for tok in tokens(text, ':') {
                let v = self.values.iter().find(|(a, _)| a == tok).map(|(_, v)| v.clone());
                let v = v.ok_or_else(|| protocol(format!("{}: no value for {tok}", self.op)))?;
                values.insert(tok.to_owned(), v);
            }
        }
        Ok((names, values))
    }
}

/// The `#name` or `:value` tokens of an expression.
fn tokens(text: &str, sigil: char) -> impl Iterator<Item = &str> {
    text.match_indices(sigil).map(move |(i, _)| {
        let rest = &text[i + 1..];
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        &text[i..i + 1 + len]
    })
}

/// `send`, cut off at `until` if given: a request without an answer by then is a retryable
/// "request timed out" (it may still be applied: the callers undo what it may have granted).
pub(crate) async fn bounded<T>(
    op: &str,
    table: &str,
    until: Option<Instant>,
    send: impl Future<Output = T>,
) -> Result<T> {
    let Some(until) = until else { return Ok(send.await) };
    tokio::time::timeout_at(until, send).await.map_err(|_| {
        Error::backend_msg(
            NAME,
            BackendErrorKind::RequestTimedOut,
            format!("{op} on table {table}: no answer within the attempt's time"),
        )
    })
}

/// A number attribute value.
pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A signed number attribute value.
pub(crate) fn signed(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A string attribute value.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A duration in whole milliseconds.
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl DynamoBackend {
    /// The key attributes of the item whose partition key is `id`.
    pub(crate) fn item_key(&self, id: &str) -> Item {
        let o = &self.inner.opts;
        let mut k = HashMap::with_capacity(2);
        k.insert(o.partition_key.clone(), AttributeValue::S(id.to_owned()));
        if let Some(sk) = &o.sort_key {
            k.insert(sk.name.clone(), AttributeValue::S(sk.value.clone()));
        }
        k
    }

    /// One conditional `UpdateItem` on the item `id`, bounded by `until` if given (otherwise
    /// by the client's own attempts and retries). A refusal carries the item as it is: the one
    /// the server returned with the failed condition, or (when it returns none) one consistent
    /// read, within the same bound.
    pub(crate) async fn write(&self, id: &str, u: Update, until: Option<Instant>) -> Result<Written> {
        let (names, values) = u.resolve()?;
        let table = &self.inner.opts.table;
        let mut req = self
            .inner
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(self.item_key(id)))
            .update_expression(&u.expression)
            .return_values(u.returns.clone())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if !u.condition.is_empty() {
            req = req.condition_expression(&u.condition);
        }
        if !names.is_empty() {
            req = req.set_expression_attribute_names(Some(names));
        }
        if !values.is_empty() {
            req = req.set_expression_attribute_values(Some(values));
        }
        match bounded(u.op, table, until, req.send()).await? {
            Ok(out) => Ok(Written::Applied(out.attributes.unwrap_or_default())),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => match &c.item {
                    Some(item) => Ok(Written::Refused(Some(item.clone()))),
                    None if u.need_item => Ok(Written::Refused(self.read_item(id, until).await?)),
                    None => Ok(Written::Refused(None)),
                },
                _ => Err(error::sdk(u.op, table, e)),
            },
        }
    }

    /// The item `id` as it is now (a strongly consistent read), if it exists; bounded by
    /// `until` if given.
    pub(crate) async fn read_item(&self, id: &str, until: Option<Instant>) -> Result<Option<Item>> {
        let table = &self.inner.opts.table;
        let get = self
            .inner
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(self.item_key(id)))
            .consistent_read(true);
        let out = bounded("GetItem", table, until, get.send())
            .await?
            .map_err(|e| error::sdk("GetItem", table, e))?;
        Ok(out.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_and_values_used_are_sent() {
        let u = Update::new("t", "SET #o = :o, #me.#kr = :v", "attribute_not_exists(#me) OR #x0.#kr = :x0")
            .name("#me", "p:1")
            .name("#x0", "p:2")
            .name("#unused", "p:3")
            .value(":o", s("a"))
            .value(":v", s("b"))
            .value(":x0", s("c"))
            .value(":unused", s("d"));
        let (names, values) = u.resolve().expect("resolves");
        let mut n: Vec<_> = names.keys().cloned().collect();
        n.sort();
        assert_eq!(n, ["#kr", "#me", "#o", "#x0"]);
        assert_eq!(names["#o"], "owner");
        let mut v: Vec<_> = values.keys().cloned().collect();
        v.sort();
        assert_eq!(v, [":o", ":v", ":x0"]);
        assert!(Update::new("t", "SET #nope = :o", "").value(":o", s("a")).resolve().is_err());
        assert!(Update::new("t", "SET #o = :nope", "").resolve().is_err());
    }
}
