//! A small etcd v3 client over tonic, with only what lock-etcd (and its tests and benchmarks)
//! use: KV (`Range`, `Put`, `DeleteRange`, `Txn`), leases (`LeaseGrant`, `LeaseRevoke`,
//! `LeaseTimeToLive`, the `LeaseKeepAlive` stream), the `Watch` stream, `Maintenance.Status`,
//! user/password auth, and etcd's lock service (`v3lockpb.Lock`, the benchmark's peer).
//!
//! - **Endpoints**: one lazily connected channel per endpoint, dialled with the connect
//!   timeout; requests and streams take the members in turn, passing over for a while a
//!   member that let a request go unanswered or said it cannot serve (the `members` module). Bare
//!   `host:port` endpoints are dialled `https://` when TLS is configured, `http://` otherwise.
//! - **Timeouts**: every unary request is bounded by the request timeout (a `DeadlineExceeded`
//!   status after it), and so is opening a stream (a keep-alive stream with its first
//!   renewal); etcd's lock service waits as long as the lock is held. lock-etcd's retry loop
//!   relies on this: a request's first attempt has no other bound.
//! - **TLS** (feature `tls`): a private CA or the system's roots, and a client certificate.
//! - **Auth**: `Authenticate` at connect; the token rides in the `token` metadata header of
//!   every KV, Watch, Maintenance and lock-service request and on lease revokes (etcd checks
//!   the user may write the keys a revoke deletes), not on the other Lease requests or Auth
//!   requests (etcd does not ask for it there). [`Client::refresh_token`] logs in again when
//!   etcd says the token expired.
//!
//! The request builders are in [`request`], the two bidirectional streams in [`stream`].
//! Public (hidden from the docs) for lock-etcd's tests and benchmarks and distlock-bench;
//! not a stable API.

mod members;
pub mod request;
pub mod stream;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lock_core::{Error, Result, Secret};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::{map_err, timeout};
use crate::options::EtcdOptions;
pub use crate::proto::etcdserverpb as pb;
pub use crate::proto::mvccpb::{event::EventType, KeyValue};
use crate::proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use members::{InFlight, Members, Picked};
use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;
pub use stream::{LeaseKeepAlive, SilenceProbe, WatchStream, PROBE_EVERY};

/// The auth token, shared by every clone of a [`Client`]; sent in the `token` header.
#[derive(Clone, Default)]
struct Token(Arc<RwLock<Option<AsciiMetadataValue>>>);

impl Token {
    fn set(&self, token: Option<AsciiMetadataValue>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = token;
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(t) = self.0.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// The channel with the auth token attached.
type Authed = InterceptedService<Channel, Token>;

/// A connection to an etcd cluster; cheap to clone (clones share the channels and the token).
#[derive(Clone)]
pub struct Client {
    members: Arc<Members>,
    /// Sent on KV, Watch, Maintenance, lock-service requests and lease revokes; not on Auth
    /// and the other Lease requests.
    token: Token,
    credentials: Option<Arc<(String, Secret)>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.credentials.as_ref().map(|c| c.0.as_str()))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// The endpoints of `opts` as tonic endpoints: scheme, TLS, connect timeout.
fn endpoints(opts: &EtcdOptions) -> Result<Vec<Endpoint>> {
    let tls = opts.uses_tls();
    opts.endpoints
        .iter()
        .map(|e| {
            let uri = match (e.contains("://"), tls) {
                (true, _) => e.clone(),
                (false, true) => format!("https://{e}"),
                (false, false) => format!("http://{e}"),
            };
            let ep = Endpoint::from_shared(uri)
                .map_err(|err| {
                    Error::InvalidConfig(format!(
                        "etcd: endpoint '{}' is not a URL: {err}",
                        lock_core::redact_url(e)
                    ))
                })?
                .connect_timeout(opts.connect_timeout);
            with_tls(ep, opts)
        })
        .collect()
}

#[cfg(feature = "tls")]
fn with_tls(ep: Endpoint, opts: &EtcdOptions) -> Result<Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    if !opts.uses_tls() {
        return Ok(ep);
    }
    let tls = opts.tls.clone().unwrap_or_default();
    let mut config = match tls.ca_pem() {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let Some((cert, key)) = tls.identity_pem() {
        config = config.identity(Identity::from_pem(cert, key));
    }
    ep.tls_config(config).map_err(|e| Error::InvalidConfig(format!("etcd: TLS settings refused: {e}")))
}

#[cfg(not(feature = "tls"))]
fn with_tls(ep: Endpoint, _opts: &EtcdOptions) -> Result<Endpoint> {
    Ok(ep)
}

impl Client {
    /// Connects to the endpoints of `opts`: logs in when it has credentials, then asks a
    /// member for its status, so that an unreachable cluster or a refused login fails here.
    /// Each step tries the members in turn until one answers (each within the connect timeout
    /// plus 500 ms): a member that is down does not fail the connect while another answers.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for invalid options, an endpoint that is not a URL or refused
    /// TLS settings; a retryable error when no endpoint answers; a non-retryable error for
    /// refused credentials.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self> {
        opts.validate()?;
        let client = Self {
            members: Members::new(endpoints(opts)?),
            token: Token::default(),
            credentials: opts.credentials.clone().map(Arc::new),
            request_timeout: opts.request_timeout,
        };
        let wait = opts.connect_timeout.saturating_add(Duration::from_millis(500));
        if client.credentials.is_some() {
            client.on_any_member("authenticate", wait, || client.refresh_token()).await?;
        }
        // The channels connect lazily: make sure someone answers.
        client.on_any_member("status", wait, || async { client.status().await.map(|_| ()) }).await?;
        Ok(client)
    }

    /// Repeats `step` (each call on the next member) until one succeeds or fails for a reason
    /// another member would not change, once per member at most, each within `wait`.
    async fn on_any_member<F, Fut>(&self, what: &str, wait: Duration, step: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<(), Status>>,
    {
        let mut last = timeout(what, wait);
        for _ in 0..self.members.len() {
            last = match tokio::time::timeout(wait, step()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(s)) => {
                    let e = map_err(s);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    e
                }
                Err(_) => timeout(what, wait),
            };
        }
        Err(last)
    }

    /// The bound of each unary request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Whether the client logs in with a user and password.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Logs in again with the configured user and password and uses the new token from now
    /// on (etcd's simple tokens expire after 5 idle minutes, JWTs at their TTL). Without
    /// credentials, does nothing.
    ///
    /// # Errors
    /// The status of a failed `Authenticate`.
    pub async fn refresh_token(&self) -> std::result::Result<(), Status> {
        let Some(creds) = self.credentials.as_deref() else { return Ok(()) };
        let req = pb::AuthenticateRequest { name: creds.0.clone(), password: creds.1.expose().clone() };
        let resp =
            self.unary(|p| async move { AuthClient::new(p.channel()).authenticate(req).await }).await?;
        let mut token = resp
            .token
            .parse::<AsciiMetadataValue>()
            .map_err(|_| Status::internal("etcd sent an auth token that is not ASCII"))?;
        // Shown as "Sensitive" wherever the request's metadata is printed.
        token.set_sensitive(true);
        self.token.set(Some(token));
        Ok(())
    }

    /// Logs in again when `e` says the auth token expired and the client has credentials:
    /// whether the caller should repeat its request (the login succeeded).
    pub async fn login_again_after(&self, e: &Status) -> bool {
        self.has_credentials() && crate::error::token_expired(e) && self.refresh_token().await.is_ok()
    }

    /// A unary call on the next member, bounded by the request timeout.
    async fn unary<T, F, Fut>(&self, call: F) -> std::result::Result<T, Status>
    where
        F: FnOnce(Picked) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        self.unary_on(&self.members.pick(), call).await
    }

    /// A unary call on member `picked`, bounded by the request timeout; tells the member how
    /// it went (a request dropped unanswered counts too).
    async fn unary_on<T, F, Fut>(&self, picked: &Picked, call: F) -> std::result::Result<T, Status>
    where
        F: FnOnce(Picked) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let reply = async { call(picked.clone()).await.map(Response::into_inner) };
        self.bounded_on(picked, "reply", reply).await
    }

    /// `work` on member `picked`, bounded by the request timeout (`DeadlineExceeded`, "no
    /// `what` within …", after it); tells the member how it went (dropped unanswered too).
    async fn bounded_on<T>(
        &self,
        picked: &Picked,
        what: &str,
        work: impl Future<Output = std::result::Result<T, Status>>,
    ) -> std::result::Result<T, Status> {
        let in_flight = InFlight::new(picked);
        let r = match tokio::time::timeout(self.request_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!("no {what} within {:?}", self.request_timeout))),
        };
        in_flight.done(&r);
        r
    }

    fn authed(&self, p: &Picked) -> Authed {
        InterceptedService::new(p.channel(), self.token.clone())
    }

    fn kv(&self, p: &Picked) -> KvClient<Authed> {
        KvClient::new(self.authed(p))
    }

    /// `KV.Range`: reads keys (see [`request`] for building the request).
    ///
    /// # Errors
    /// The request's status.
    pub async fn range(&self, req: pb::RangeRequest) -> std::result::Result<pb::RangeResponse, Status> {
        self.unary(|p| async move { self.kv(&p).range(req).await }).await
    }

    /// `KV.Put`: writes one key.
    ///
    /// # Errors
    /// The request's status.
    pub async fn put(&self, req: pb::PutRequest) -> std::result::Result<pb::PutResponse, Status> {
        self.unary(|p| async move { self.kv(&p).put(req).await }).await
    }

    /// `KV.DeleteRange`: deletes a key or a range.
    ///
    /// # Errors
    /// The request's status.
    pub async fn delete_range(
        &self,
        req: pb::DeleteRangeRequest,
    ) -> std::result::Result<pb::DeleteRangeResponse, Status> {
        self.unary(|p| async move { self.kv(&p).delete_range(req).await }).await
    }

    /// `KV.Txn`: compares, then runs one branch, atomically.
    ///
    /// # Errors
    /// The request's status.
    pub async fn txn(&self, req: pb::TxnRequest) -> std::result::Result<pb::TxnResponse, Status> {
        self.unary(|p| async move { self.kv(&p).txn(req).await }).await
    }

    /// `Lease.LeaseGrant`: a new lease of `ttl` seconds (the server may grant more).
    ///
    /// # Errors
    /// The request's status.
    pub async fn lease_grant(&self, ttl: i64) -> std::result::Result<pb::LeaseGrantResponse, Status> {
        let req = pb::LeaseGrantRequest { ttl, id: 0 };
        self.unary(|p| async move { LeaseClient::new(p.channel()).lease_grant(req).await }).await
    }

    /// `Lease.LeaseRevoke`: ends lease `id`, deleting every key attached to it. Sent with the
    /// auth token: with auth enabled, etcd checks the user may write every key attached to
    /// the lease (its own expiry revokes as root), and refuses a revoke without a user. An
    /// expired token is renewed once.
    ///
    /// # Errors
    /// The request's status (`NotFound` when the lease is gone already).
    pub async fn lease_revoke(&self, id: i64) -> std::result::Result<(), Status> {
        let revoke = || {
            let req = pb::LeaseRevokeRequest { id };
            async move {
                self.unary(|p| async move { LeaseClient::new(self.authed(&p)).lease_revoke(req).await })
                    .await
                    .map(|_| ())
            }
        };
        let r = revoke().await;
        match &r {
            Err(e) if self.login_again_after(e).await => revoke().await,
            _ => r,
        }
    }

    /// `Lease.LeaseTimeToLive`: the seconds lease `id` has left (`-1` when it is gone),
    /// without renewing it.
    ///
    /// # Errors
    /// The request's status.
    pub async fn lease_time_to_live(&self, id: i64) -> std::result::Result<i64, Status> {
        let req = pb::LeaseTimeToLiveRequest { id, keys: false };
        self.unary(|p| async move { LeaseClient::new(p.channel()).lease_time_to_live(req).await })
            .await
            .map(|r| r.ttl)
    }

    /// `Lease.LeaseKeepAlive`: opens a keep-alive stream for lease `id` and renews it once.
    /// Returns the stream and the TTL granted by that renewal (0 when the lease is gone). The
    /// open and the first renewal together are bounded by the request timeout.
    ///
    /// # Errors
    /// The status of a failed open or first renewal; `DeadlineExceeded` when the first
    /// renewal's reply is not in within the request timeout.
    pub async fn lease_keep_alive(&self, id: i64) -> std::result::Result<(LeaseKeepAlive, i64), Status> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let _ = tx.unbounded_send(pb::LeaseKeepAliveRequest { id });
        let picked = self.members.pick();
        let open_and_renew = async {
            let responses = LeaseClient::new(picked.channel()).lease_keep_alive(rx).await?.into_inner();
            let mut keep_alive = LeaseKeepAlive::new(id, tx, responses, picked.clone());
            let ttl = keep_alive.reply().await?;
            Ok((keep_alive, ttl))
        };
        self.bounded_on(&picked, "keep-alive reply", open_and_renew).await
    }

    /// `Watch.Watch`: opens a watch stream with `create` as its first watcher. The stream's
    /// first message is that watcher's `created` response. The stream requires a leader
    /// (`hasleader`): a member without one refuses it, and ends it (`Unavailable`, "no leader")
    /// once it has had none for a few election timeouts.
    ///
    /// # Errors
    /// The status of a failed open.
    pub async fn watch(&self, create: pb::WatchCreateRequest) -> std::result::Result<WatchStream, Status> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let _ = tx.unbounded_send(stream::create(create));
        let picked = self.members.pick();
        let mut req = Request::new(rx);
        // Go's `WithRequireLeader`: the member refuses the stream while it has no leader, and
        // cancels it once it has had none for a few election timeouts. A member cut off from
        // the others still answers progress requests from its own store, so the silence probe
        // alone would not tell that nothing more can come through it.
        req.metadata_mut().insert("hasleader", AsciiMetadataValue::from_static("true"));
        let responses = self
            .unary_on(&picked, |p| async move { WatchClient::new(self.authed(&p)).watch(req).await })
            .await?;
        Ok(WatchStream::new(tx, responses, picked))
    }

    /// `Maintenance.Status` of the member that serves the request.
    ///
    /// # Errors
    /// The request's status.
    pub async fn status(&self) -> std::result::Result<pb::StatusResponse, Status> {
        self.unary(
            |p| async move { MaintenanceClient::new(self.authed(&p)).status(pb::StatusRequest {}).await },
        )
        .await
    }

    /// etcd's lock service: waits (with no timeout) until the lock `name` is held on `lease`,
    /// and returns the key that stands for it.
    ///
    /// # Errors
    /// The request's status.
    pub async fn lock(&self, name: impl Into<Vec<u8>>, lease: i64) -> std::result::Result<Vec<u8>, Status> {
        let req = LockRequest { name: name.into(), lease };
        let picked = self.members.pick();
        let r = LockClient::new(self.authed(&picked)).lock(req).await;
        picked.outcome(&r);
        Ok(r?.into_inner().key)
    }

    /// etcd's lock service: releases the lock held by `key` (from [`Client::lock`]).
    ///
    /// # Errors
    /// The request's status.
    pub async fn unlock(&self, key: impl Into<Vec<u8>>) -> std::result::Result<(), Status> {
        let req = UnlockRequest { key: key.into() };
        self.unary(|p| async move { LockClient::new(self.authed(&p)).unlock(req).await }).await.map(|_| ())
    }
}
