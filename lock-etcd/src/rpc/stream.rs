//! The two bidirectional streams: lease keep-alive and watch. Requests go in through an
//! unbounded channel (sending never waits), replies come out of tonic's `Streaming`.
//! Dropping a handle ends its stream (and, for a watch, every watcher on it).

use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use lock_core::Instant;
use tonic::{Code, Status, Streaming};

use super::members::Picked;
use super::pb;
use pb::watch_request::RequestUnion;

fn closed(what: &str) -> Status {
    Status::unavailable(format!("the etcd {what} stream is closed"))
}

/// A watch request that adds a watcher.
pub(super) fn create(req: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest { request_union: Some(RequestUnion::CreateRequest(req)) }
}

/// An open `LeaseKeepAlive` stream for one lease (from
/// [`Client::lease_keep_alive`](super::Client::lease_keep_alive)).
#[derive(Debug)]
pub struct LeaseKeepAlive {
    id: i64,
    requests: UnboundedSender<pb::LeaseKeepAliveRequest>,
    replies: Streaming<pb::LeaseKeepAliveResponse>,
    member: Picked,
}

impl LeaseKeepAlive {
    pub(super) fn new(
        id: i64,
        requests: UnboundedSender<pb::LeaseKeepAliveRequest>,
        replies: Streaming<pb::LeaseKeepAliveResponse>,
        member: Picked,
    ) -> Self {
        Self { id, requests, replies, member }
    }

    /// The member serving the stream left a renewal unanswered: the client passes it over
    /// for a while (the caller reopens the stream, on another member).
    pub fn unanswered(&self) {
        self.member.unanswered();
    }

    /// The lease this stream renews.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Renews the lease once: the TTL the server granted, 0 when the lease is gone (revoked
    /// or expired).
    ///
    /// # Errors
    /// The stream's status when it broke (`Unavailable` when it closed).
    pub async fn renew(&mut self) -> Result<i64, Status> {
        self.requests
            .unbounded_send(pb::LeaseKeepAliveRequest { id: self.id })
            .map_err(|_| closed("keep-alive"))?;
        self.reply().await
    }

    /// The next reply's TTL.
    pub(super) async fn reply(&mut self) -> Result<i64, Status> {
        match self.replies.message().await {
            Ok(Some(r)) => Ok(r.ttl),
            Ok(None) => Err(closed("keep-alive")),
            Err(s) if s.code() == Code::NotFound => Ok(0),
            Err(s) => Err(s),
        }
    }
}

/// An open `Watch` stream (from [`Client::watch`](super::Client::watch)): several watchers,
/// told apart by their watch id.
#[derive(Debug)]
pub struct WatchStream {
    requests: UnboundedSender<pb::WatchRequest>,
    replies: Streaming<pb::WatchResponse>,
    member: Picked,
}

impl WatchStream {
    pub(super) fn new(
        requests: UnboundedSender<pb::WatchRequest>,
        replies: Streaming<pb::WatchResponse>,
        member: Picked,
    ) -> Self {
        Self { requests, replies, member }
    }

    /// Adds a watcher; its `created` response (with its watch id) comes on the stream, in the
    /// order the watchers were asked for.
    ///
    /// # Errors
    /// `Unavailable` when the stream is closed.
    pub fn watch(&self, req: pb::WatchCreateRequest) -> Result<(), Status> {
        self.requests.unbounded_send(create(req)).map_err(|_| closed("watch"))
    }

    /// Cancels the watcher `watch_id`.
    ///
    /// # Errors
    /// `Unavailable` when the stream is closed.
    pub fn cancel(&self, watch_id: i64) -> Result<(), Status> {
        let req = pb::WatchCancelRequest { watch_id };
        self.requests
            .unbounded_send(pb::WatchRequest { request_union: Some(RequestUnion::CancelRequest(req)) })
            .map_err(|_| closed("watch"))
    }

    /// Asks the server for a progress report: a response with no events and watch id -1,
    /// which says the stream still answers.
    ///
    /// # Errors
    /// `Unavailable` when the stream is closed.
    pub fn request_progress(&self) -> Result<(), Status> {
        let req = RequestUnion::ProgressRequest(pb::WatchProgressRequest {});
        self.requests
            .unbounded_send(pb::WatchRequest { request_union: Some(req) })
            .map_err(|_| closed("watch"))
    }

    /// The next response (`None` when the server ended the stream).
    ///
    /// # Errors
    /// The stream's status when it broke.
    pub async fn message(&mut self) -> Result<Option<pb::WatchResponse>, Status> {
        self.replies.message().await
    }
}

/// How often a watch stream that brought nothing is asked whether it still answers.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Tells a silent watch stream from a quiet one. A member that stops answering (paused, cut
/// off) leaves its streams open and silent: after [`PROBE_EVERY`] without a message the
/// stream is asked for a progress report, and one that has not answered within `answer` of
/// the request has fallen silent.
#[derive(Debug)]
pub struct SilenceProbe {
    /// The next probe, or (after one was sent) the time by which the stream must answer.
    at: Instant,
    asked: bool,
    answer: Duration,
}

impl SilenceProbe {
    /// A probe for a stream just heard from, expecting answers within `answer`.
    pub fn new(answer: Duration) -> Self {
        Self { at: Instant::now() + PROBE_EVERY, asked: false, answer }
    }

    /// When [`SilenceProbe::due`] must next be called.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The time [`SilenceProbe::at`] came: asks `ws` for a progress report. `false` when the
    /// stream has fallen silent (the last request went unanswered, or the stream is closed);
    /// the client then passes its member over for a while, so that the caller's new stream
    /// goes to another one.
    pub fn due(&mut self, ws: &WatchStream) -> bool {
        if self.asked || ws.request_progress().is_err() {
            ws.member.unanswered();
            return false;
        }
        (self.at, self.asked) = (lock_core::lease::add_saturating(Instant::now(), self.answer), true);
        true
    }

    /// The stream brought a message.
    pub fn heard(&mut self) {
        (self.at, self.asked) = (Instant::now() + PROBE_EVERY, false);
    }
}
