//! How commands report: errors (text or JSON) with their exit code, and a spinner while
//! waiting on a terminal.

use std::process::ExitCode;
use std::time::Duration;

use distlock::Error;
use serde_json::json;

use crate::exit;

/// Where and how a command reports.
pub(crate) struct Out {
    /// Print JSON instead of text.
    pub(crate) json: bool,
    /// Show a spinner while waiting (stderr is a terminal and the output is text).
    pub(crate) spin: bool,
}

impl Out {
    /// Reports `e` and returns its exit code.
    pub(crate) fn fail(&self, e: &Error) -> ExitCode {
        if self.json {
            println!(
                "{}",
                json!({ "error": e.to_string(), "kind": e.label(), "retryable": e.is_retryable() })
            );
        } else {
            eprintln!("distlock: {e}");
        }
        ExitCode::from(exit::for_error(e))
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
                        eprint!("\r{} {what} ({:.1}s)", frames[i % frames.len()], start.elapsed().as_secs_f64());
                        i += 1;
                    }
                }
            }
        };
        if i > 0 {
            eprint!("\r\x1b[2K");
        }
        out
    }
}
