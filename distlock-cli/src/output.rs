//! How commands report: errors (text or JSON) with their exit code, and a spinner while
//! waiting on a terminal.

use std::process::ExitCode;
use std::time::Duration;

use distlock::Error;
use serde_json::json;

use crate::exit;

/// Writes one line to standard error; a failure to write is ignored (see `say_err!`).
pub(crate) fn write_err(line: std::fmt::Arguments<'_>) {
    write_stderr(format_args!("{line}\n"));
}

/// Writes one line to standard output; whether it was written (see `say_out!`).
pub(crate) fn write_out(line: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Where and how a command reports.
pub(crate) struct Out {
    /// Print JSON instead of text.
    pub(crate) json: bool,
    /// Show a spinner while waiting (stderr is a terminal and the output is text).
    pub(crate) spin: bool,
    /// JSON goes to stderr as event lines (`run`, `elect`: stdout is the command's).
    pub(crate) events: bool,
}

impl Out {
    /// Reports `e` and returns its exit code. With `--json`: one object on stdout, or an
    /// `{"event":"error",…}` line on stderr where stdout is the command's.
    pub(crate) fn fail(&self, e: &Error) -> ExitCode {
        if self.json {
            let error = error_fields(e);
            if self.events {
                self.event("error", error);
            } else {
                say_out!("{error}");
            }
        } else {
            say_err!("distlock: {e}");
        }
        ExitCode::from(exit::for_error(e))
    }

    /// Says `text` on stderr, or with `--json` the event `name` with the fields of `fields`
    /// (an object) as one JSON line there.
    pub(crate) fn say(&self, text: impl std::fmt::Display, name: &str, fields: serde_json::Value) {
        if self.json {
            self.event(name, fields);
        } else {
            say_err!("distlock: {text}");
        }
    }

    /// Prints the event `name` with the fields of `fields` (an object) as one JSON line on
    /// stderr.
    pub(crate) fn event(&self, name: &str, fields: serde_json::Value) {
        let mut event = serde_json::Map::new();
        event.insert("event".to_owned(), json!(name));
        if let serde_json::Value::Object(more) = fields {
            event.extend(more);
        }
        say_err!("{}", serde_json::Value::Object(event));
    }

    /// Runs `fut`, showing a spinner with the time waited on a terminal.
    pub(crate) async fn waiting<F: std::future::Future>(&self, what: &str, fut: F) -> F::Output {
        if !self.spin {
            return fut.await;
        }
        let start = std::time::Instant::now();
        let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut i = 0;
        let out = loop {
            tokio::select! {
                out = &mut fut => break out,
                _ = tick.tick() => {
                    if start.elapsed() > Duration::from_millis(300) {
                        write_stderr(format_args!("\r{} {what} ({:.1}s)", frames[i % frames.len()], start.elapsed().as_secs_f64()));
                        i += 1;
                    }
                }
            }
        };
        if i > 0 {
            write_stderr(format_args!("\r\x1b[2K"));
        }
        out
    }
}

/// Writes `text` to standard error as it is (a spinner's frame has no newline); a failure to
/// write is ignored.
fn write_stderr(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(text).and_then(|()| err.flush());
}

/// The JSON object that reports `e`: its message, its kind and whether a retry can help.
pub(crate) fn error_fields(e: &Error) -> serde_json::Value {
    json!({ "error": e.to_string(), "kind": e.label(), "retryable": e.is_retryable() })
}
