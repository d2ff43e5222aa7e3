//! DynamoDB and SDK failures as distlock errors: throttling, 5xx, transaction conflicts,
//! transport failures and replies cut short (the request may have been carried out) are
//! retryable; an item that would pass DynamoDB's size limit is
//! [`Error::InvalidMetadata`]; a failed condition is never an error (the callers turn it into
//! "held").

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use lock_core::{BackendErrorKind, Error};

pub(crate) const NAME: &str = "dynamodb";

/// Maps an SDK error of operation `op` on `table`.
pub(crate) fn sdk<E>(op: &str, table: &str, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, what) = match &e {
        SdkError::TimeoutError(_) => (BackendErrorKind::RequestTimedOut, "timed out".to_owned()),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            (BackendErrorKind::RequestTimedOut, "timed out".to_owned())
        }
        SdkError::DispatchFailure(_) => (BackendErrorKind::Connection, "could not reach DynamoDB".to_owned()),
        // A reply cut short or unreadable: the request may have been carried out. Retryable,
        // so that the caller's undo of an attempt runs (as for a timeout).
        SdkError::ResponseError(_) => (
            BackendErrorKind::Connection,
            "the reply was cut short or unreadable (the request may have been carried out)".to_owned(),
        ),
        SdkError::ServiceError(se) if too_large(se.err().code(), se.err().message()) => {
            return Error::InvalidMetadata(format!(
                "{op} on table {table}: the item would pass DynamoDB's 400 KB item limit (every permit \
                 or reader keeps its holder's metadata in the one item: use shorter values, or fewer \
                 permits)"
            ));
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown error");
            let status = se.raw().status().as_u16();
            let kind = service_kind(code, status);
            let hint = if code == "ResourceNotFoundException" {
                " (create the table first: DynamoBackend::create_table)"
            } else {
                ""
            };
            let msg = se.err().message().unwrap_or("");
            (kind, format!("{code} (HTTP {status}): {msg}{hint}"))
        }
        _ => (BackendErrorKind::Other, "request could not be built".to_owned()),
    };
    let message = format!("{op} on table {table}: {what}");
    Error::backend(NAME, kind, message, SdkErrorText(DisplayErrorContext(e).to_string()))
}

/// Whether a service error says the item would grow past DynamoDB's item size limit.
fn too_large(code: Option<&str>, message: Option<&str>) -> bool {
    code == Some("ValidationException")
        && message.is_some_and(|m| m.contains("Item size") && m.contains("exceeded"))
}

/// The kind of a service error, by its code and HTTP status.
pub(crate) fn service_kind(code: &str, status: u16) -> BackendErrorKind {
    match code {
        "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "LimitExceededException" => BackendErrorKind::Throttled,
        // A transaction still in progress (its client request token retried too soon) may
        // yet be applied: retryable, so that the caller's undo runs.
        "InternalServerError"
        | "ServiceUnavailable"
        | "InternalFailure"
        | "TransactionConflictException"
        | "TransactionInProgressException" => BackendErrorKind::Unavailable,
        "UnrecognizedClientException"
        | "AccessDeniedException"
        | "InvalidSignatureException"
        | "MissingAuthenticationTokenException"
        | "ExpiredTokenException"
        | "IncompleteSignature" => BackendErrorKind::Auth,
        // 5xx; or a success status whose body could not be read as one (the request was
        // carried out, its answer lost): retryable, so that an attempt's undo runs.
        _ if status >= 500 || (200..300).contains(&status) => BackendErrorKind::Unavailable,
        _ => BackendErrorKind::Other,
    }
}

/// An SDK error rendered with its whole chain, as the source of a distlock error.
#[derive(Debug)]
struct SdkErrorText(String);

impl std::fmt::Display for SdkErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SdkErrorText {}

/// A reply this crate did not expect (an attribute missing or of the wrong type).
pub(crate) fn protocol(message: impl Into<String>) -> Error {
    Error::backend_msg(NAME, BackendErrorKind::Protocol, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_5xx_retry_and_auth_does_not() {
        assert!(service_kind("ThrottlingException", 400).is_retryable());
        assert!(service_kind("ProvisionedThroughputExceededException", 400).is_retryable());
        assert!(service_kind("InternalServerError", 500).is_retryable());
        assert!(service_kind("SomethingNew", 503).is_retryable());
        assert!(service_kind("unknown error", 200).is_retryable());
        assert!(!service_kind("UnrecognizedClientException", 400).is_retryable());
        assert!(!service_kind("ValidationException", 400).is_retryable());
        assert!(service_kind("TransactionConflictException", 400).is_retryable());
        // The same client request token retried while its first copy is still being carried
        // out: the transaction may yet be applied, so the caller's undo must run.
        assert!(service_kind("TransactionInProgressException", 400).is_retryable());
        assert!(too_large(
            Some("ValidationException"),
            Some("Item size has exceeded the maximum allowed size")
        ));
        assert!(too_large(
            Some("ValidationException"),
            Some("Item size to update has exceeded the maximum allowed size")
        ));
        assert!(!too_large(Some("ValidationException"), Some("Invalid UpdateExpression")));
    }
}
