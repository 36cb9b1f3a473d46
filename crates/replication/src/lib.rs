//! The replication service of a site: the replication listener (partners
//! dial in over mutual TLS), outgoing sessions to partners, and what runs on
//! them: the partner monitor (reachability, RTT), the authorization check a
//! primary asks of its replica before creating a group, `partner test`'s
//! bulk throughput test, and the replication groups (cycles, the sync
//! stream, failover, reverse), whose parts have their own modules.
//!
//! Trust comes from the catalog on every connection: the listener's
//! [`PinnedPeers`] looks the offered certificate up in the partner table, so
//! `partner add`/`remove` apply to the next connection, and an established
//! session whose partner is removed is closed within [`REVALIDATE_EVERY`].
//!
//! ```mermaid
//! sequenceDiagram
//!     participant P as primary (site A)
//!     participant R as replica (site B)
//!     P->>R: TCP + TLS 1.3, client cert (A's key)
//!     R-->>P: server cert (B's key); each side checks the pinned fingerprint
//!     P->>R: Hello{versions, "A", features}
//!     R-->>P: HelloAccept{version, "B", features} (or HelloRefuse{code, why})
//!     P->>R: Request{id, AUTHZ_CHECK, {"security_tag": ..}}
//!     R-->>P: Response{id, ok, {"storage_location", "rule"} | {"error", "code"}}
//!     P->>R: BulkData{seq, payload} ... (partner test)
//!     R-->>P: BulkAck{seq, bytes}
//! ```
//!
//! Every request and reply of the control plane is typed in [`control`]
//! (its changelog table lists the kinds), and [`control`]'s dispatch table
//! answers them.

mod attach;
pub mod bucket;
mod channel;
mod clock;
mod confirm;
pub mod control;
mod decide;
mod dormant;
mod initial;
mod journal;
pub mod model;
mod monitor;
mod pits;
mod primary;
mod quiesce;
mod recovery;
mod replica_side;
mod replica_state;
mod resync;
mod runners;
mod settings;
mod status;
mod superseded;
mod switch;
mod sync;
mod test_failover;
#[cfg(test)]
mod testing;
mod verify;
pub mod wire;

pub use model::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use attach::{AttachAction, Attached, AttachedGroup};
use bytes::Bytes;
pub use control::RemoteError;
use offsite_engine::Site;
use offsite_protocol::{ErrorCode, Message};
use offsite_transport::{
    Fingerprint, Identity, ListenerConfig, ListenerStats, Partner, PeerName, PinnedPeers, Session,
    SessionOptions, TokenBucket, TransportError,
};
use serde::{Deserialize, Serialize};
pub use switch::{ReplacedAction, ReplacedGroup};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// Request kinds carried in [`Message::Request`]. Numbers are wire format:
/// never reuse one.
pub mod kinds {
    /// "Would you accept replicas from me with this security tag?" Body:
    /// [`super::AuthzCheckBody`]; answer: `AuthzCheckResult` or an error.
    pub const AUTHZ_CHECK: u16 = 1;
}

/// Answers site-to-site requests of kinds from [`wire::kinds::EXTENSION_FIRST`]
/// on, for services layered above replication (recovery plans): they
/// depend on this crate, so it cannot call them directly.
pub trait RequestHandler: Send + Sync {
    /// Answers request `kind` from partner `peer`: the answer's body, or
    /// the refusal.
    fn answer(
        &self,
        peer: String,
        kind: u16,
        body: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, RemoteError>> + Send + '_>>;
}

/// How often an accepted session checks that its partner is still pinned.
pub const REVALIDATE_EVERY: Duration = Duration::from_secs(2);

/// Bytes sent by `partner test` when the request does not say.
pub const DEFAULT_TEST_BYTES: u64 = 256 << 20;
/// Most bytes `partner test` sends (64 GiB: minutes on a fast link; a
/// larger figure is a typo, not a measurement).
pub const MAX_TEST_BYTES: u64 = 64 << 30;

/// Body of an [`kinds::AUTHZ_CHECK`] request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthzCheckBody {
    /// Security tag the primary's group presents.
    pub security_tag: Option<String>,
}

/// Logs the failure of a write that records what already happened, or
/// cleans up after an earlier error: the operation's outcome is decided,
/// so saying what failed is all that is left to do.
pub(crate) fn warn_if_failed<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) {
    if let Err(e) = r {
        tracing::warn!("{what} failed: {e}");
    }
}

/// A blocking task that failed: it panicked or was cancelled, or it
/// returned an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError<E> {
    /// The task panicked or was cancelled.
    #[error("{0}")]
    Join(tokio::task::JoinError),
    /// The task's own error.
    #[error("{0}")]
    Failed(E),
}

/// Flattens a blocking task's result for [`warn_if_failed`].
pub(crate) fn joined<T, E: std::fmt::Display>(
    r: Result<Result<T, E>, tokio::task::JoinError>,
) -> Result<T, TaskError<E>> {
    r.map_err(TaskError::Join)?.map_err(TaskError::Failed)
}

/// What is wrong with the site's TLS identity or a partner's pinned one.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key or certificate in `tls/` could not be loaded.
    #[error(transparent)]
    Load(#[from] offsite_transport::IdentityError),
    /// `tls/` holds another site's certificate.
    #[error(
        "certificate {} has fingerprint {found}, but the catalog records {recorded}; restore the site's tls/ directory",
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// Its fingerprint.
        found: String,
        /// The one the catalog records.
        recorded: String,
    },
    /// A partner's name in the catalog cannot be a name on the wire.
    #[error("partner name {name:?}: {source:?}")]
    PartnerName {
        /// The name.
        name: String,
        /// Why not.
        source: offsite_transport::InvalidPeerName,
    },
    /// A partner's pinned fingerprint in the catalog does not parse.
    #[error("pinned fingerprint of {partner}: {source:?}")]
    Fingerprint {
        /// The partner.
        partner: String,
        /// Why not.
        source: offsite_transport::InvalidFingerprint,
    },
    /// Looking the partner up in the catalog did not finish.
    #[error("looking up partner {partner}: {source}")]
    Lookup {
        /// The partner.
        partner: String,
        /// The blocking task's failure.
        source: tokio::task::JoinError,
    },
}

/// Errors of the replication service, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The site's TLS identity, or a partner's pinned one, is unusable.
    #[error("loading the site's TLS identity: {0}")]
    Identity(IdentityError),
    /// No such partner.
    #[error("no partner named {0:?}; `offsite partner list` shows the partners")]
    NoSuchPartner(String),
    /// The partner could not be reached or refused the session.
    #[error("partner {partner}: {source}")]
    Transport {
        /// Partner name.
        partner: String,
        /// What happened.
        #[source]
        source: TransportError,
    },
    /// A refusal, with its stable code: the partner's answer to a
    /// request, or this site's own refusal of the kind a partner would
    /// send.
    #[error("{0}")]
    Refused(RemoteError),
    /// The partner's answer made no sense.
    #[error(
        "partner {partner} sent an unexpected answer: {why}; are both sites the same offsite version?"
    )]
    Protocol {
        /// Partner name.
        partner: String,
        /// What was wrong.
        why: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] offsite_engine::EngineError),
}

impl ReplError {
    /// The refusal, if this is one: its [`RemoteError::code`] says what
    /// the partner refused (a v1 partner's is always `refused`).
    pub fn refusal(&self) -> Option<&RemoteError> {
        match self {
            ReplError::Refused(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the partner could not be reached at all (as opposed to
    /// reached and refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ReplError::Transport {
                source: TransportError::Unreachable { .. }
                    | TransportError::ConnectTimeout { .. }
                    | TransportError::HandshakeTimeout { .. }
                    | TransportError::PeerDead { .. },
                ..
            }
        )
    }
}

/// A failure of this site's own work, as the refusal a partner receives:
/// a refusal keeps its code, an engine error its class.
impl From<ReplError> for RemoteError {
    fn from(e: ReplError) -> Self {
        match e {
            ReplError::Refused(e) => e,
            ReplError::Engine(e) => e.into(),
            ReplError::NoSuchPartner(_) => RemoteError::NotFound(e.to_string()),
            ReplError::Identity(_) => RemoteError::Internal(e.to_string()),
            ReplError::Transport { .. } | ReplError::Protocol { .. } => {
                RemoteError::Refused(e.to_string())
            }
        }
    }
}

/// The partners pinned in the catalog, as the TLS layer asks for them.
struct CatalogPeers(Arc<Site>);

impl PinnedPeers for CatalogPeers {
    fn lookup(&self, fingerprint: &Fingerprint) -> Option<PeerName> {
        let p = self.0.partner_by_fingerprint(fingerprint.as_str())?;
        PeerName::new(p.name).ok()
    }
}

/// A site's replication service.
pub struct Replication {
    site: Arc<Site>,
    identity: Identity,
    options: SessionOptions,
    /// The partner monitor's sessions and what it last confirmed.
    monitor: monitor::Monitor,
    /// Serializes `group create`, so that the one-group-per-volume check
    /// and the insert are not interleaved by concurrent creates.
    create_lock: Mutex<()>,
    /// Primary side: the group runners, and what they share about groups
    /// in flight.
    runners: runners::Runners,
    /// The site-wide default bandwidth limit (`site set --bandwidth`),
    /// shared by every outgoing session so that together they respect it.
    site_bucket: Arc<TokenBucket>,
    stats: std::sync::Mutex<Option<Arc<ListenerStats>>>,
    /// The listener's options for sessions it accepts, once it runs
    /// ([`Replication::reload`] updates them).
    listener_options: std::sync::Mutex<Option<offsite_transport::SessionOptionsHandle>>,
    /// Replica side: the open write logs, the primaries' confirmations
    /// and the full stores.
    replica: replica_state::ReplicaState,
    /// Answers requests of kinds from [`wire::kinds::EXTENSION_FIRST`] on.
    extension: std::sync::OnceLock<Arc<dyn RequestHandler>>,
    /// Where lag, the instants it is measured from and a sync group's
    /// waiting writes read the time.
    clock: Arc<dyn clock::Clock>,
    /// The crate's tests: a fake partner every link is dialled to.
    #[cfg(test)]
    fake_peer: std::sync::OnceLock<Arc<testing::FakePeer>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

impl Replication {
    /// The service for `site`, with its identity from `tls/` in the data
    /// directory and `options` for every session.
    pub fn new(site: Arc<Site>, options: SessionOptions) -> Result<Arc<Replication>, ReplError> {
        let layout = site.layout();
        let identity = Identity::load(&layout.key(), &layout.cert())
            .map_err(|e| ReplError::Identity(e.into()))?;
        if identity.fingerprint().as_str() != site.fingerprint() {
            return Err(ReplError::Identity(IdentityError::Mismatch {
                cert: layout.cert(),
                found: identity.fingerprint().as_str().to_string(),
                recorded: site.fingerprint().to_string(),
            }));
        }
        Ok(Arc::new(Replication {
            site,
            identity,
            options,
            monitor: Default::default(),
            create_lock: Mutex::new(()),
            runners: Default::default(),
            site_bucket: Arc::new(TokenBucket::with_rate(u64::MAX / 4)),
            stats: std::sync::Mutex::new(None),
            listener_options: std::sync::Mutex::new(None),
            replica: Default::default(),
            extension: std::sync::OnceLock::new(),
            clock: Arc::new(clock::SystemClock),
            #[cfg(test)]
            fake_peer: std::sync::OnceLock::new(),
        }))
    }

    /// Installs the handler of request kinds from
    /// [`wire::kinds::EXTENSION_FIRST`] on (once; later calls are ignored).
    pub fn set_extension(&self, handler: Arc<dyn RequestHandler>) {
        // Documented: the first handler stays.
        drop(self.extension.set(handler));
    }

    /// Sends one request to partner `partner` on a fresh session and
    /// returns its typed answer (for [`RequestHandler`] services, whose
    /// request types implement [`control::Rpc`] with their own kinds).
    pub async fn call_partner<R: control::Rpc>(
        &self,
        partner: &str,
        request: &R,
    ) -> Result<R::Reply, ReplError> {
        let mut ch = self.channel(partner, None).await?;
        let r = ch.call(request).await;
        ch.close().await;
        r
    }

    /// The options of a new session: those given to [`Replication::new`],
    /// with the timers of the site's configuration in force (so a reload
    /// applies to every session opened after it).
    pub(crate) fn session_options(&self) -> SessionOptions {
        let mut options = self.options.clone();
        let r = &self.site.config().replication;
        options.connect_timeout = Duration::from_secs_f64(r.connect_timeout_secs);
        options.keepalive_interval = Duration::from_secs_f64(r.keepalive_secs);
        options.dead_after = Duration::from_secs_f64(r.dead_after_secs);
        options
    }

    /// Puts the site's reloaded configuration in force for replication:
    /// the timers of sessions opened from now on (dialled or accepted; open
    /// sessions keep theirs until they are re-established) and the probe
    /// interval (read by the monitor each round), and the site's default
    /// bandwidth limit `site_bandwidth` (bytes/s, `None` unlimited), which
    /// applies at once, to sessions already open too.
    pub fn reload(&self, site_bandwidth: Option<u64>) {
        if let Some(handle) = self
            .listener_options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            handle.set(self.session_options());
        }
        match site_bandwidth.filter(|b| *b > 0) {
            Some(rate) => self.site_bucket.set_rate(rate, (rate / 10).max(256 << 10)),
            // Open sessions hold the shared bucket: lift its limit for them.
            None => self.site_bucket.set_rate(u64::MAX / 4, u64::MAX / 4),
        }
    }

    /// Counters of the replication listener, once it runs.
    pub fn listener_stats(&self) -> Option<Arc<ListenerStats>> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves the replication listener until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future,
    ) -> Result<(), ReplError> {
        let mut config = ListenerConfig::new(
            self.site.config().name.clone(),
            self.identity.clone(),
            Arc::new(CatalogPeers(self.site.clone())),
        );
        config.session = self.session_options();
        let l =
            offsite_transport::Listener::new(config).map_err(|source| ReplError::Transport {
                partner: "-".into(),
                source,
            })?;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(l.stats());
        *self
            .listener_options
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(l.session_options());
        let me = self.clone();
        l.run(
            listener,
            move |session| {
                let me = me.clone();
                async move { me.handle(session).await }
            },
            shutdown,
        )
        .await;
        Ok(())
    }

    /// Serves one accepted session until the peer ends it, it fails, or the
    /// peer is unpinned.
    async fn handle(self: Arc<Self>, session: Session) {
        let mut transfer = replica_side::Transfer::Idle;
        self.clone().handle_session(session, &mut transfer).await;
        match transfer {
            // A sync stream ended (the primary stopped it, or the link
            // failed): its log becomes a PIT, so cycles can follow.
            replica_side::Transfer::Log { group, .. } => {
                if let Err(e) = self.seal_log(&group).await {
                    tracing::warn!(group, "sealing the write log after its stream: {e}");
                }
            }
            replica_side::Transfer::Pit { writer, .. } => writer.abort(),
            _ => {}
        }
    }

    /// Serves one session a partner opened: block batches applied to the
    /// transfer under way, requests dispatched, the partner's pairing
    /// checked again every [`REVALIDATE_EVERY`]; a sync stream's session is
    /// handed over to the stream's thread.
    async fn handle_session(
        self: Arc<Self>,
        mut session: Session,
        transfer: &mut replica_side::Transfer,
    ) {
        let peer = session.info().peer_name.to_string();
        let fingerprint = session.info().peer_fingerprint.as_str().to_string();
        let mut received = 0u64;
        let mut revalidate = tokio::time::interval(REVALIDATE_EVERY);
        revalidate.tick().await;
        loop {
            // The reply to the request that starts a sync stream is the
            // last message of this task: the stream's thread takes over.
            let mut direct = false;
            let msg = {
                tokio::select! {
                    m = session.recv() => m,
                    _ = revalidate.tick() => {
                        if !self.still_paired(&peer, &fingerprint).await {
                            tracing::warn!(partner = %peer, "partner was removed; closing its session");
                            // Closing either way: the reason is a courtesy.
                            let _ = session
                                .send(Message::error(
                                    ErrorCode::Internal,
                                    format!("site {} no longer pairs with {peer}", self.site.config().name),
                                ))
                                .await;
                            session.close().await;
                            return;
                        }
                        continue;
                    }
                }
            };
            let reply = match msg {
                Ok(Some(Message::BulkData { seq, payload })) => {
                    received += payload.len() as u64;
                    match self
                        .apply_received_batch(&mut session, &peer, &payload, transfer)
                        .await
                    {
                        BatchOutcome::Applied => {}
                        BatchOutcome::Refused => continue,
                        BatchOutcome::Failed => {
                            session.close().await;
                            return;
                        }
                    }
                    Message::BulkAck {
                        seq,
                        bytes: received,
                    }
                }
                Ok(Some(Message::Request { id, kind, body })) => {
                    let (ok, body) = self.dispatch(&peer, kind, body, transfer).await;
                    direct = ok && kind == wire::kinds::SYNC_STREAM_BEGIN;
                    Message::Response { id, ok, body }
                }
                Ok(Some(other)) => {
                    tracing::warn!(partner = %peer, got = %other.tag(), "unexpected message; closing the session");
                    // Closing either way: the reason is a courtesy.
                    let _ = session
                        .send(Message::error(
                            ErrorCode::UnexpectedMessage,
                            format!("unexpected {}", other.tag()),
                        ))
                        .await;
                    session.close().await;
                    return;
                }
                Ok(None) => {
                    session.close().await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(partner = %peer, "replication session ended: {e}");
                    return;
                }
            };
            if let Err(e) = session.send(reply).await {
                tracing::warn!(partner = %peer, "replication session ended: {e}");
                return;
            }
            if direct {
                self.hand_over_stream(session, &peer, transfer).await;
                return;
            }
        }
    }

    /// Whether the partner `peer` of a session is still paired with this
    /// site under the certificate fingerprint it connected with.
    async fn still_paired(&self, peer: &str, fingerprint: &str) -> bool {
        let site = self.site.clone();
        let fp = fingerprint.to_string();
        let pinned = tokio::task::spawn_blocking(move || site.partner_by_fingerprint(&fp))
            .await
            .ok()
            .flatten();
        pinned.is_some_and(|p| p.name == peer)
    }

    /// Applies a block batch to the transfer under way (ignored when
    /// idle). A refused batch aborts the transfer; a full store is said,
    /// typed, and the session kept; any other failure is said and ends the
    /// session.
    async fn apply_received_batch(
        &self,
        session: &mut Session,
        peer: &str,
        payload: &[u8],
        transfer: &mut replica_side::Transfer,
    ) -> BatchOutcome {
        let applied = match &*transfer {
            replica_side::Transfer::Idle => Ok(()),
            _ => self.apply_batch(payload, transfer),
        };
        let Err(e) = applied else {
            return BatchOutcome::Applied;
        };
        tracing::warn!(partner = %peer, "refusing a block batch: {}", e.message);
        if let replica_side::Transfer::Pit { writer, .. } =
            std::mem::replace(transfer, replica_side::Transfer::Idle)
        {
            writer.abort();
        }
        if e.storage_full {
            // Said, typed, and the session kept: the primary reads it in
            // order with the acknowledgements instead of finding a closed
            // session. The rest of the transfer lands in no PIT (idle). A
            // send that fails broke the session: the next read ends it.
            let _ = session
                .send(Message::error(ErrorCode::StorageFull, e.message))
                .await;
            return BatchOutcome::Refused;
        }
        // Closing either way: the reason is a courtesy.
        let _ = session
            .send(Message::error(ErrorCode::Internal, e.message))
            .await;
        BatchOutcome::Failed
    }

    /// The stream's batches never wait for the session's task: a thread
    /// takes the connection over (see `serve_stream`) until the stream
    /// ends.
    async fn hand_over_stream(
        self: &Arc<Self>,
        session: Session,
        peer: &str,
        transfer: &replica_side::Transfer,
    ) {
        let replica_side::Transfer::Log { group, store, slot } = transfer else {
            return;
        };
        let (group, store, slot) = (group.clone(), store.clone(), slot.clone());
        let stream = match session.into_direct().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(partner = %peer, group, "starting the sync stream: {e}");
                return;
            }
        };
        let me = self.clone();
        let g = group.clone();
        let served =
            tokio::task::spawn_blocking(move || me.serve_stream(&stream, &g, &store, &slot))
                .await
                .unwrap_or_else(|e| Err(e.into()));
        match served {
            Ok(()) => {
                tracing::info!(partner = %peer, group, "sync stream ended by the primary")
            }
            Err(e) => tracing::warn!(partner = %peer, group, "sync stream ended: {e}"),
        }
    }

    /// Answers [`kinds::AUTHZ_CHECK`]: would this site accept replicas
    /// from `peer` with this security tag?
    pub(crate) async fn answer_authz(
        &self,
        peer: &str,
        req: AuthzCheckBody,
    ) -> Result<wire::AuthzGrant, RemoteError> {
        let site = self.site.clone();
        let primary = peer.to_string();
        let grant = tokio::task::spawn_blocking(move || {
            site.authorize_primary(&primary, req.security_tag.as_deref())
        })
        .await??;
        Ok(wire::AuthzGrant {
            partner: self.site.config().name.clone(),
            storage_location: grant.storage_location,
            rule: grant.rule,
        })
    }

    fn partner(site: &Site, name: &str) -> Result<Partner, ReplError> {
        let p = site
            .partner(name)
            .map_err(|_| ReplError::NoSuchPartner(name.to_string()))?;
        Ok(Partner {
            name: PeerName::new(p.name.clone()).map_err(|source| {
                ReplError::Identity(IdentityError::PartnerName {
                    name: p.name.clone(),
                    source,
                })
            })?,
            address: p.address,
            fingerprint: p.fingerprint.parse::<Fingerprint>().map_err(|source| {
                ReplError::Identity(IdentityError::Fingerprint {
                    partner: name.to_string(),
                    source,
                })
            })?,
        })
    }

    /// Opens a session to partner `name`.
    pub async fn connect(
        &self,
        name: &str,
        options: &SessionOptions,
    ) -> Result<Session, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let (partner, bandwidth) = tokio::task::spawn_blocking(move || {
            Self::partner(&site, &n).map(|p| {
                let bw = site.settings().ok().and_then(|s| s.bandwidth_bytes_per_sec);
                (p, bw)
            })
        })
        .await
        .map_err(|source| {
            ReplError::Identity(IdentityError::Lookup {
                partner: name.to_string(),
                source,
            })
        })??;
        let mut options = options.clone();
        if options.bandwidth.is_none()
            && let Some(rate) = bandwidth
        {
            if self.site_bucket.rate() != rate {
                self.site_bucket.set_rate(rate, (rate / 10).max(256 << 10));
            }
            options.bandwidth = Some(self.site_bucket.clone());
        }
        offsite_transport::connect(&partner, &self.identity, &self.site.config().name, &options)
            .await
            .map_err(|source| ReplError::Transport {
                partner: name.to_string(),
                source,
            })
    }

    /// Asks partner `name` whether it would accept replicas from this site
    /// presenting `security_tag`; its refusal names the rule.
    pub async fn authz_check(
        &self,
        name: &str,
        security_tag: Option<String>,
    ) -> Result<AuthzCheckResult, ReplError> {
        let mut ch = self.channel(name, None).await?;
        let answer = ch.call(&AuthzCheckBody { security_tag }).await;
        ch.close().await;
        let grant = answer?;
        Ok(AuthzCheckResult {
            partner: grant.partner,
            storage_location: grant.storage_location,
            rule: grant.rule,
        })
    }

    /// `partner test`: a fresh session (handshake timed), a ping, and a
    /// bulk transfer of `bytes`.
    pub async fn partner_test(
        &self,
        name: &str,
        req: &PartnerTestRequest,
    ) -> Result<PartnerTestResult, ReplError> {
        if let Some(b) = req.bytes
            && !(1..=MAX_TEST_BYTES).contains(&b)
        {
            return Err(invalid(format!(
                "--bytes {b} is outside 1..{MAX_TEST_BYTES} (64 GiB)"
            )));
        }
        let mut options = self.session_options();
        options.compression = req.compress;
        let started = Instant::now();
        let mut session = self.connect(name, &options).await?;
        let handshake = started.elapsed();
        let compression = session
            .info()
            .features
            .contains(offsite_protocol::Features::ZSTD);
        let version = session.info().version;
        let bytes = req.bytes.unwrap_or(DEFAULT_TEST_BYTES).max(1);
        let report = offsite_transport::throughput_test(&mut session, bytes, 1 << 20)
            .await
            .map_err(|source| ReplError::Transport {
                partner: name.to_string(),
                source,
            })?;
        session.close().await;
        let rtt_micros = report.rtt.as_micros() as u64;
        let site = self.site.clone();
        let n = name.to_string();
        // `record_partner_contact` logs its own failure; a panic in it is
        // the task's to report.
        drop(
            tokio::task::spawn_blocking(move || site.record_partner_contact(&n, Ok(rtt_micros)))
                .await,
        );
        Ok(PartnerTestResult {
            partner: name.to_string(),
            protocol_version: version.as_u16(),
            compression,
            handshake_ms: handshake.as_secs_f64() * 1000.0,
            rtt_ms: report.rtt.as_secs_f64() * 1000.0,
            bytes: report.bytes,
            seconds: report.elapsed.as_secs_f64(),
            mb_per_s: report.mb_per_sec(),
        })
    }
}

/// A refusal that is the user's to fix, as a [`ReplError`].
pub(crate) fn invalid(msg: String) -> ReplError {
    ReplError::Engine(offsite_engine::EngineError::Invalid(msg))
}

/// Runs catalog and file work off the async runtime.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplError> + Send + 'static,
) -> Result<T, ReplError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| invalid(e.to_string()))?
}

/// What became of a block batch a session received.
enum BatchOutcome {
    /// Applied (or nothing under way to apply it to): acknowledge it.
    Applied,
    /// Refused for a full store, said to the primary; the session goes on.
    Refused,
    /// Refused, and said: the session is to be closed.
    Failed,
}
