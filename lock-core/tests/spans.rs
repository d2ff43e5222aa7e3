//! Acquire, the guard, renewal, extend and release each run in a tracing span with the backend,
//! the key, the fencing token once known and the outcome; a loss is an event in the guard's span.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::LockClient;
use lock_local::MemoryBackend;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type FieldMap = HashMap<String, String>;
/// Span id -> (name, fields).
type Spans = HashMap<u64, (String, FieldMap)>;
/// (event message, the name of the span it was in, its fields).
type Events = Vec<(String, Option<String>, FieldMap)>;

#[derive(Default, Clone)]
struct Seen {
    spans: Arc<Mutex<Spans>>,
    events: Arc<Mutex<Events>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Seen {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.spans.lock().unwrap().insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let span = ctx.event_span(event).map(|s| s.name().to_owned());
        self.events.lock().unwrap().push((message, span, fields));
    }
}

fn span<'a>(
    seen: &'a HashMap<u64, (String, HashMap<String, String>)>,
    name: &str,
) -> Vec<&'a HashMap<String, String>> {
    seen.values().filter(|(n, _)| n == name).map(|(_, f)| f).collect()
}

#[tokio::test]
async fn every_step_runs_in_a_span_and_a_loss_is_an_event_of_the_guard() {
    let seen = Seen::default();
    let subscriber = tracing_subscriber::registry().with(seen.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let locks = LockClient::new(MemoryBackend::new());
    let g = locks.lock("jobs/a").ttl(Duration::from_millis(900)).auto_renew().acquire().await.unwrap();
    g.extend(Duration::from_secs(1)).await.unwrap();
    let token = g.fencing_token().get().to_string();
    g.release().await.unwrap();
    // A loss: a lease that runs out without renewal.
    let lost = locks.lock("jobs/b").ttl(Duration::from_millis(100)).acquire().await.unwrap();
    lost.lost().await;
    drop(lost);
    let spans = seen.spans.lock().unwrap().clone();
    let acquire = span(&spans, "distlock.acquire");
    let a =
        acquire.iter().find(|f| f.get("key").map(String::as_str) == Some("jobs/a")).expect("acquire span");
    assert_eq!(a.get("backend").map(String::as_str), Some("memory"));
    assert_eq!(a.get("outcome").map(String::as_str), Some("acquired"));
    assert_eq!(a.get("fencing_token"), Some(&token));
    let guard = span(&spans, "distlock.guard");
    assert!(guard.iter().any(
        |f| f.get("key").map(String::as_str) == Some("jobs/a") && f.get("fencing_token") == Some(&token)
    ));
    assert!(span(&spans, "distlock.extend")
        .iter()
        .any(|f| f.get("outcome").map(String::as_str) == Some("ok")));
    assert!(span(&spans, "distlock.release")
        .iter()
        .any(|f| f.get("outcome").map(String::as_str) == Some("released")));
    assert!(!span(&spans, "distlock.renewal").is_empty(), "no renewal span");
    let events = seen.events.lock().unwrap().clone();
    let loss = events.iter().find(|(m, _, _)| m == "lock lost").expect("no loss event");
    assert_eq!(loss.1.as_deref(), Some("distlock.guard"), "the loss is not an event of the guard's span");
    assert_eq!(loss.2.get("key").map(String::as_str), Some("jobs/b"));
}
