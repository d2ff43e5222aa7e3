//! How the operator commands show a holder: one line of text, or a JSON object.

use distlock::{LockInfo, Mode};
use serde_json::{json, Value};

/// A holder as JSON: token, owner, time left, mode, and its metadata.
pub(crate) fn to_json(key: &str, i: &LockInfo) -> Value {
    let m = i.metadata.as_ref();
    json!({
        "key": key,
        "mode": mode_name(i.mode),
        "fencing_token": i.fencing_token.map(|f| f.get()),
        "owner": i.owner.map(|o| o.to_string()),
        "remaining_ttl_ms": i.remaining_ttl.map(|d| d.as_millis() as u64),
        "host": m.map(|m| m.host.clone()),
        "pid": m.map(|m| m.pid),
        "program": m.map(|m| m.program.clone()),
        "acquired_at_ms": m.map(|m| m.acquired_at_ms),
        "value": m.and_then(|m| m.value.clone()),
    })
}

/// A holder as one line of text.
pub(crate) fn to_text(key: &str, i: &LockInfo) -> String {
    let who = match &i.metadata {
        Some(m) => format!(
            ", held by {} pid {} ({}) since {}{}",
            m.host,
            m.pid,
            m.program,
            since(m.acquired_at_ms),
            m.value.as_ref().map(|v| format!(", value {v:?}")).unwrap_or_default()
        ),
        None => String::new(),
    };
    format!(
        "'{key}' {}: fencing token {}, owner {}, {} left{who}",
        mode_name(i.mode),
        i.fencing_token.map_or("unknown (foreign holder)".to_owned(), |f| f.to_string()),
        i.owner.map_or("unknown".to_owned(), |o| o.to_string()),
        i.remaining_ttl.map_or("unknown time".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
    )
}

/// The mode's name as the commands print it.
pub(crate) fn mode_name(mode: Mode) -> String {
    match mode {
        Mode::Permit { limit } => format!("permit of {limit}"),
        Mode::Read => "read".into(),
        Mode::Write => "write".into(),
        Mode::Leader => "leader".into(),
        _ => "lock".into(),
    }
}

fn since(ms: u64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64);
    match now {
        Ok(now) if now >= ms => format!("{:.1}s ago", (now - ms) as f64 / 1000.0),
        _ => format!("{ms} ms after the epoch"),
    }
}
