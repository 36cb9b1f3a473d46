//! The typed control plane between two sites: every site-to-site request
//! is a variant of [`SiteRequest`], every reply a [`Reply`] type named by
//! the request's [`Rpc::Reply`], and every refusal a [`RemoteError`] with
//! a stable code. [`Replication::dispatch`] is the one table that answers
//! them.
//!
//! Why here and not in `offsite-protocol`: the bodies are replication's
//! own types ([`crate::wire`]: groups, PITs, volumes, VMs), and the
//! protocol crate stays free of them (it knows frames, the hello and the
//! generic [`Message::Request`] / [`Message::Response`] that carry these
//! bodies). Recovery plans (kinds 40–42) sit above replication and define
//! their own types in `offsite_plan::wire` with the same [`Rpc`] trait;
//! here they are [`SiteRequest::Extension`], answered through
//! [`crate::RequestHandler`].
//!
//! # Wire encoding
//!
//! A request travels as `Message::Request { id, kind, body }`, `body`
//! the JSON of the variant's type; the reply as `Message::Response { id,
//! ok, body }`: with `ok` the [`Reply`] ([`Done`] is an empty body,
//! [`HashList`] raw bytes, the others JSON), else [`ErrorBody`]
//! `{"error": TEXT, "code": CODE}`. This is the encoding of protocol v1
//! byte for byte (`code` is new in v2; a v1 site reads `error` and ignores
//! it, and a v1 site's refusal without `code` decodes as
//! [`RemoteError::Refused`]), so a site of this version serves and asks
//! an un-upgraded v1 partner unchanged. The JSON of every body is pinned
//! by `tests/fixtures/control/*.json` (`tests/control_golden.rs`), which
//! were captured from the v1 code.
//!
//! # Changelog of request kinds
//!
//! Numbers are wire format: never reuse one. "Since" is the protocol
//! version ([`offsite_protocol::MessageVersion`]) that defined the kind.
//!
//! | kind | name | direction | body | reply | since |
//! | ---: | --- | --- | --- | --- | --- |
//! | 1 | `AUTHZ_CHECK` | primary → replica | [`AuthzCheckBody`] | [`AuthzGrant`] | v1 |
//! | 2 | `GROUP_CREATE` | primary → replica | [`GroupCreate`] | [`GroupCreated`] | v1 |
//! | 3 | `BASE_BEGIN` | primary → replica | [`BaseBegin`] | [`Done`] | v1 |
//! | 4 | `BASE_SYNC` | primary → replica | [`BaseSync`] | [`Done`] | v1 |
//! | 5 | `PIT_BEGIN` | primary → replica | [`PitBegin`] | [`PitBegun`] (an older replica's empty [`Done`] reads as no features) | v1 |
//! | 6 | `PIT_COMMIT` | primary → replica | [`PitCommit`] | [`PitCommitted`] | v1 |
//! | 7 | `HASHES` | primary → replica | [`Hashes`] | [`HashList`] (`count` × 32 raw bytes) | v1 |
//! | 8 | `SYNC` | replica → primary | [`SyncRequest`] | [`SyncDone`] | v1 |
//! | 9 | `GROUP_DELETE` | primary → replica | [`GroupDelete`] | [`Done`] | v1 |
//! | 10 | `PIT_RELEASE` | primary → replica | [`PitRelease`] | [`Done`] | v1 |
//! | 11 | `SEED_LOAD` | primary → replica | [`SeedLoad`] | [`Done`] | v1 |
//! | 12 | `GROUP_QUERY` | either way | [`GroupQuery`] | [`GroupView`] | v1 |
//! | 13 | `GROUP_PREPARED` | primary → replica | [`GroupPrepared`] | [`Done`] | v1 |
//! | 14 | `REVERSE_BEGIN` | new primary → old primary | [`ReverseBegin`] | [`ReverseReady`] | v1 |
//! | 15 | `GROUP_FORGET` | replica → primary | [`GroupForget`] | [`Done`] | v1 |
//! | 16 | `MARK_DIRTY` | replica → primary | [`MarkDirty`] | [`Done`] | v1 |
//! | 17 | `SYNC_STREAM_BEGIN` | primary → replica | [`SyncStreamBegin`] | [`SyncStreamBegun`] (an older replica's empty [`Done`] reads as no features); the session becomes the stream | v1 |
//! | 18 | `SYNC_SEAL` | primary → replica, on a stream only | [`SyncSeal`] | [`PitCommitted`] | v1 |
//! | 19 | `GROUP_SET_MODE` | primary → replica | [`GroupSetMode`] | [`Done`] | v1 |
//! | 20 | `GROUP_CONFIRMED` | primary → replica | [`Confirmed`] | [`Done`] | v1 |
//! | 21 | `SITE_QUERY` | either way | [`SiteQuery`] | [`SiteView`] | v2 (optional: an older peer refuses it as unsupported, and its console is then not linked) |
//! | 22 | `SYNC_CHECKPOINT` | primary → replica, on a stream only; **no answer** | [`SyncCheckpoint`] | none (the stream's answers are the seals', counted in order) | v2 (sent only when the replica's [`SyncStreamBegun`] has `checkpoints`: an older replica is sent none) |
//! | 23 | `JOURNAL_QUERY` | primary → replica | [`JournalQuery`] | [`JournalView`] | v2 (optional: an older replica refuses it as unsupported, and `pit list --checkpoints` at the primary says so) |
//! | 40 | `PLAN_PUT` | either way | `offsite_plan::wire::PlanPut` | [`Done`] | v1 |
//! | 41 | `PLAN_SITE_OP` | either way | `offsite_plan::wire::SiteOp` | `SiteOpDone` | v1 |
//! | 42 | `PLAN_RUN_RECORD` | either way | `offsite_plan::wire::RunRecord` | [`Done`] | v1 |
//!
//! Protocol versions:
//!
//! - **v1**: the kinds above with free-text refusals `{"error": TEXT}`.
//! - **v2**: refusals carry a stable code as well, `{"error": TEXT,
//!   "code": CODE}` ([`RemoteError::code`]); bodies and replies unchanged.
//!   A v2 site speaks v1 with a v1 peer (the hello negotiates it) and the
//!   only difference on the wire, the extra `code` field, is ignored there.
//!
//! A new kind, field or meaning gets a line here and in
//! [`offsite_protocol::MessageVersion`]; a new field is optional
//! (`#[serde(default)]`) so that a peer of the previous version, which
//! omits it, still decodes.
//!
//! Optional fields added within v2 (left out at their default, so an older
//! peer reads and sends the bodies of the fixtures named by kind; the new
//! forms are pinned by `quiesce-*.json` and `reply-*-app-consistent.json`):
//!
//! | body | field | meaning | an older peer |
//! | --- | --- | --- | --- |
//! | [`VmDesc`](crate::wire::VmDesc) (in [`GroupCreate`], [`GroupSetMode`]) | `quiesce`, `thaw` | the VM's checkpoint hooks, kept by the replica for after a reverse | drops them: its copy has none |
//! | [`GroupCreate`] | `app_consistent_every_secs` | the group's schedule of app-consistent PITs (0: off) | drops it |
//! | [`GroupSetMode`] | `app_consistent_every_secs` | a new schedule (`group set --app-consistent-every`) | keeps its copy |
//! | [`PitCommit`], [`SyncSeal`] | `app_consistent` | the cut was taken with the group's VMs quiesced or cleanly stopped: the replica marks the PIT | commits it unmarked (the primary marks its own row anyway) |
//! | [`PitDesc`](crate::wire::PitDesc) (in [`PitCommitted`], [`SyncDone`], [`ReverseReady`]) | `app_consistent` | the PIT's mark, so both catalogs agree | shows it crash-consistent |
//! | [`SyncRequest`] | `quiesce` | `sync --quiesce` asked at the replica | a plain cycle, unmarked |
//! | [`SyncDone`] | `errors` | what made that PIT crash-consistent | not reported |
//! | [`GroupCreate`], [`GroupSetMode`] | `journal` | the group's journal settings ([`JournalDesc`](crate::wire::JournalDesc): checkpoint interval, history, size), kept and applied by the replica | drops them: keeps no history |
//! | [`SyncStreamBegun`] (reply to `SYNC_STREAM_BEGIN`, empty before) | `checkpoints` | the replica takes `SYNC_CHECKPOINT` on the stream | sends an empty body: no checkpoints are sent to it |
//! | [`GroupCreate`] | `pits_after` | the group is re-created at a rebuilt partner: its store numbers PITs after this id | numbers them from 1 |
//! | [`GroupCreate`] | `key` | the group's key (export line) when its replicas are encrypted: the replica keeps it and seals its store | ignores it, and answers without `encrypted` |
//! | [`GroupCreated`] | `encrypted` | the replica keeps the key and its store is sealed with it | absent (false): the primary undoes the group and refuses (`encrypted-02-group_create.json`, `reply-group-created-encrypted.json`) |
//! | [`PitBegun`] (reply to `PIT_BEGIN`, empty before) | `record_batches` | the replica takes the PIT's blocks as *record batches* (many runs per batch, each a write-log record with its CRC32C; sent without the frame's BLAKE3 where the session negotiated `SELF_CHECKED_BULK`) | sends an empty body: it is sent one run per batch, hashed (`reply-pit-begun.json`) |
//! | [`PitCommitted`] | `journal` | the journal window after the commit ([`JournalWindow`](crate::wire::JournalWindow)), shown by the primary's status | not reported: the primary shows no window |
//!
//! [`Message::Request`]: offsite_protocol::Message::Request
//! [`Message::Response`]: offsite_protocol::Message::Response

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::AuthzCheckBody;
use crate::Replication;
use crate::replica_side::Transfer;
use crate::wire::kinds::{self, EXTENSION_FIRST};
pub use crate::wire::{
    AuthzGrant, BaseBegin, BaseSync, Confirmed, GroupCreate, GroupCreated, GroupDelete,
    GroupForget, GroupPrepared, GroupQuery, GroupSetMode, GroupView, Hashes, JournalQuery,
    JournalView, MarkDirty, PitBegin, PitBegun, PitCommit, PitCommitted, PitRelease, ReverseBegin,
    ReverseReady, SeedLoad, SiteQuery, SiteView, SyncCheckpoint, SyncDone, SyncRequest, SyncSeal,
    SyncStreamBegin, SyncStreamBegun,
};

/// A refusal from the partner (or of the partner's request), with a
/// stable [`code`](RemoteError::code) that travels with its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The request could not be decoded (`bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// The site does not know the request kind (`unsupported`): it runs
    /// an older version.
    #[error("{0}")]
    Unsupported(String),
    /// The group, PIT or other named thing does not exist there
    /// (`not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The requesting site may not ask this (`unauthorized`): no
    /// authorization entry admits it, or the group is replicated with
    /// another site.
    #[error("{0}")]
    Unauthorized(String),
    /// The group's state does not allow it (`conflict`): failed over,
    /// initial replication over, a transfer already running, ...
    #[error("{0}")]
    Conflict(String),
    /// Both sites wrote after diverging (`split_brain`): the operator
    /// chooses the survivor.
    #[error("{0}")]
    SplitBrain(String),
    /// The replica store's file system is full (`storage_full`); nothing
    /// is lost and replication resumes by itself.
    #[error("{0}")]
    StorageFull(String),
    /// Something else is under way; retry (`busy`).
    #[error("{0}")]
    Busy(String),
    /// A refusal without a more precise class (`refused`); also every
    /// refusal of a v1 peer, which sends no code, and any code this build
    /// does not know.
    #[error("{0}")]
    Refused(String),
    /// The site failed doing it (`internal`).
    #[error("{0}")]
    Internal(String),
}

impl RemoteError {
    /// Every code, as [`RemoteError::code`] spells it.
    pub const CODES: [&'static str; 10] = [
        "bad_request",
        "unsupported",
        "not_found",
        "unauthorized",
        "conflict",
        "split_brain",
        "storage_full",
        "busy",
        "refused",
        "internal",
    ];

    /// The stable code sent on the wire (never change one; add new ones).
    pub fn code(&self) -> &'static str {
        match self {
            RemoteError::BadRequest(_) => "bad_request",
            RemoteError::Unsupported(_) => "unsupported",
            RemoteError::NotFound(_) => "not_found",
            RemoteError::Unauthorized(_) => "unauthorized",
            RemoteError::Conflict(_) => "conflict",
            RemoteError::SplitBrain(_) => "split_brain",
            RemoteError::StorageFull(_) => "storage_full",
            RemoteError::Busy(_) => "busy",
            RemoteError::Refused(_) => "refused",
            RemoteError::Internal(_) => "internal",
        }
    }

    /// The error of `code` with `text`; an unknown or absent code (a
    /// newer or a v1 peer) is [`RemoteError::Refused`].
    pub fn from_code(code: Option<&str>, text: String) -> Self {
        match code.unwrap_or("refused") {
            "bad_request" => RemoteError::BadRequest(text),
            "unsupported" => RemoteError::Unsupported(text),
            "not_found" => RemoteError::NotFound(text),
            "unauthorized" => RemoteError::Unauthorized(text),
            "conflict" => RemoteError::Conflict(text),
            "split_brain" => RemoteError::SplitBrain(text),
            "storage_full" => RemoteError::StorageFull(text),
            "busy" => RemoteError::Busy(text),
            "internal" => RemoteError::Internal(text),
            _ => RemoteError::Refused(text),
        }
    }

    /// The text, for the operator.
    pub fn message(&self) -> &str {
        match self {
            RemoteError::BadRequest(m)
            | RemoteError::Unsupported(m)
            | RemoteError::NotFound(m)
            | RemoteError::Unauthorized(m)
            | RemoteError::Conflict(m)
            | RemoteError::SplitBrain(m)
            | RemoteError::StorageFull(m)
            | RemoteError::Busy(m)
            | RemoteError::Refused(m)
            | RemoteError::Internal(m) => m,
        }
    }

    /// The same error with `f` applied to its text (context added by a
    /// caller keeps the code).
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        RemoteError::from_code(Some(self.code()), f(self.message().to_string()))
    }

    /// The error body of a `Response { ok: false }`.
    pub fn to_body(&self) -> Bytes {
        let body = ErrorBody {
            error: self.message().to_string(),
            code: Some(self.code().to_string()),
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// Decodes the body of a `Response { ok: false }` (any bytes: a body
    /// that is not an [`ErrorBody`] is its own text).
    pub fn from_body(body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => RemoteError::from_code(e.code.as_deref(), e.error),
            Err(_) => RemoteError::Refused(String::from_utf8_lossy(body).into_owned()),
        }
    }

    /// A connection-level [`offsite_protocol::Message::Error`] as a
    /// refusal (a full replica store says so with its own code).
    pub fn from_message_error(code: offsite_protocol::ErrorCode, message: String) -> Self {
        match code {
            offsite_protocol::ErrorCode::StorageFull => RemoteError::StorageFull(message),
            _ => RemoteError::Refused(message),
        }
    }
}

/// A refusal without a more precise class (the text of v1 handlers).
impl From<String> for RemoteError {
    fn from(text: String) -> Self {
        RemoteError::Refused(text)
    }
}

impl From<&str> for RemoteError {
    fn from(text: &str) -> Self {
        RemoteError::Refused(text.to_string())
    }
}

/// The engine's class of error, with its text.
impl From<offsite_engine::EngineError> for RemoteError {
    fn from(e: offsite_engine::EngineError) -> Self {
        use offsite_engine::ErrorKind;
        let text = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => RemoteError::NotFound(text),
            ErrorKind::Conflict => RemoteError::Conflict(text),
            ErrorKind::Invalid => RemoteError::BadRequest(text),
            ErrorKind::Busy => RemoteError::Busy(text),
            ErrorKind::Internal => RemoteError::Internal(text),
        }
    }
}

/// A primary this site refuses is `unauthorized`; a site that could not
/// decide failed (`internal`).
impl From<offsite_engine::authz::AuthzError> for RemoteError {
    fn from(e: offsite_engine::authz::AuthzError) -> Self {
        if e.is_refusal() {
            RemoteError::Unauthorized(e.to_string())
        } else {
            RemoteError::Internal(e.to_string())
        }
    }
}

/// A blocking task that could not finish.
impl From<tokio::task::JoinError> for RemoteError {
    fn from(e: tokio::task::JoinError) -> Self {
        RemoteError::Internal(e.to_string())
    }
}

/// A refusal's body: `{"error": TEXT, "code": CODE}` (`code` since v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was refused and what to do, for the operator.
    pub error: String,
    /// [`RemoteError::code`]; absent from v1 sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A request or reply body that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No request of this kind exists in this build.
    #[error("request kind {0} is unknown")]
    UnknownKind(u16),
    /// The body is not what the kind carries.
    #[error("malformed {name} (kind {kind}): {source}")]
    Malformed {
        /// Request kind.
        kind: u16,
        /// Its name.
        name: &'static str,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// A raw reply of the wrong length.
    #[error("{0}")]
    Length(String),
}

impl From<DecodeError> for RemoteError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnknownKind(_) => RemoteError::Unsupported(e.to_string()),
            // The v1 text ("malformed request: ...") kept for the log.
            DecodeError::Malformed { source, .. } => {
                RemoteError::BadRequest(format!("malformed request: {source}"))
            }
            DecodeError::Length(m) => RemoteError::BadRequest(m),
        }
    }
}

/// A reply's body.
pub trait Reply: Sized + Send {
    /// The body of `Response { ok: true }`.
    fn encode(&self) -> Bytes;
    /// Reads it back.
    fn decode(body: &[u8]) -> Result<Self, DecodeError>;
}

/// A request: its body type, kind number, name and reply.
pub trait Rpc: Serialize + DeserializeOwned + Send {
    /// The kind number on the wire.
    const KIND: u16;
    /// The kind's name (the constant in [`crate::wire::kinds`]).
    const NAME: &'static str;
    /// What a successful answer carries.
    type Reply: Reply;

    /// The request's body.
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads a body of this kind.
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
            kind: Self::KIND,
            name: Self::NAME,
            source,
        })
    }
}

/// The empty reply of a request that only succeeds or is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Done;

impl Reply for Done {
    fn encode(&self) -> Bytes {
        Bytes::new()
    }
    /// Whatever the body holds (v1 sites send an empty one).
    fn decode(_: &[u8]) -> Result<Self, DecodeError> {
        Ok(Done)
    }
}

/// The reply to [`Hashes`]: `count` BLAKE3 hashes of 32 bytes, raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashList(pub Bytes);

impl Reply for HashList {
    fn encode(&self) -> Bytes {
        self.0.clone()
    }
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if !body.len().is_multiple_of(32) {
            return Err(DecodeError::Length(format!(
                "{} hash bytes are not a whole number of 32-byte hashes",
                body.len()
            )));
        }
        Ok(HashList(Bytes::copy_from_slice(body)))
    }
}

/// Replies that are JSON.
macro_rules! json_reply {
    ($($t:ty),* $(,)?) => {$(
        impl Reply for $t {
            fn encode(&self) -> Bytes {
                Bytes::from(serde_json::to_vec(self).unwrap_or_default())
            }
            fn decode(body: &[u8]) -> Result<Self, DecodeError> {
                serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
                    kind: 0,
                    name: stringify!($t),
                    source,
                })
            }
        }
    )*};
}

json_reply!(
    AuthzGrant,
    GroupCreated,
    PitCommitted,
    SyncDone,
    GroupView,
    ReverseReady,
    SiteView,
    JournalView
);

/// JSON, but an older replica's empty [`Done`] body is "no features".
impl Reply for PitBegun {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.is_empty() {
            return Ok(PitBegun::default());
        }
        serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
            kind: 0,
            name: "PitBegun",
            source,
        })
    }
}

impl Reply for SyncStreamBegun {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.is_empty() {
            return Ok(SyncStreamBegun::default());
        }
        serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
            kind: 0,
            name: "SyncStreamBegun",
            source,
        })
    }
}

/// Every request of replication (the changelog table above), with the
/// [`Rpc`] impl of each body and [`SiteRequest`]'s codec.
macro_rules! site_requests {
    ($($variant:ident($body:ty) = $kind:ident -> $reply:ty;)*) => {
        $(
            impl Rpc for $body {
                const KIND: u16 = kinds::$kind;
                const NAME: &'static str = stringify!($kind);
                type Reply = $reply;
            }

            impl From<$body> for SiteRequest {
                fn from(r: $body) -> Self {
                    SiteRequest::$variant(r)
                }
            }
        )*

        /// A decoded site-to-site request: one variant per kind (see the
        /// module's changelog table).
        #[derive(Debug, Clone)]
        pub enum SiteRequest {
            $(
                #[doc = concat!("`", stringify!($kind), "`: [`", stringify!($body), "`] → [`", stringify!($reply), "`].")]
                $variant($body),
            )*
            /// A kind from [`EXTENSION_FIRST`] on, answered by the
            /// service above replication ([`crate::RequestHandler`]).
            Extension {
                /// Its kind.
                kind: u16,
                /// Its body, undecoded.
                body: Bytes,
            },
        }

        impl SiteRequest {
            /// Every kind of this crate, in wire order, with its name.
            pub const KINDS: &'static [(u16, &'static str)] = &[$((kinds::$kind, stringify!($kind))),*];

            /// Its kind number.
            pub fn kind(&self) -> u16 {
                match self {
                    $(SiteRequest::$variant(_) => kinds::$kind,)*
                    SiteRequest::Extension { kind, .. } => *kind,
                }
            }

            /// Its kind's name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(SiteRequest::$variant(_) => stringify!($kind),)*
                    SiteRequest::Extension { .. } => "EXTENSION",
                }
            }

            /// Kind and body, as carried in a `Message::Request`.
            pub fn encode(&self) -> (u16, Bytes) {
                match self {
                    $(SiteRequest::$variant(r) => (kinds::$kind, Rpc::encode(r)),)*
                    SiteRequest::Extension { kind, body } => (*kind, body.clone()),
                }
            }

            /// The request of `kind` carrying `body`.
            pub fn decode(kind: u16, body: &[u8]) -> Result<Self, DecodeError> {
                match kind {
                    $(kinds::$kind => Ok(SiteRequest::$variant(<$body as Rpc>::decode(body)?)),)*
                    k if k >= EXTENSION_FIRST => Ok(SiteRequest::Extension {
                        kind: k,
                        body: Bytes::copy_from_slice(body),
                    }),
                    k => Err(DecodeError::UnknownKind(k)),
                }
            }
        }
    };
}

site_requests! {
    AuthzCheck(AuthzCheckBody) = AUTHZ_CHECK -> AuthzGrant;
    GroupCreate(GroupCreate) = GROUP_CREATE -> GroupCreated;
    BaseBegin(BaseBegin) = BASE_BEGIN -> Done;
    BaseSync(BaseSync) = BASE_SYNC -> Done;
    PitBegin(PitBegin) = PIT_BEGIN -> PitBegun;
    PitCommit(PitCommit) = PIT_COMMIT -> PitCommitted;
    Hashes(Hashes) = HASHES -> HashList;
    Sync(SyncRequest) = SYNC -> SyncDone;
    GroupDelete(GroupDelete) = GROUP_DELETE -> Done;
    PitRelease(PitRelease) = PIT_RELEASE -> Done;
    SeedLoad(SeedLoad) = SEED_LOAD -> Done;
    GroupQuery(GroupQuery) = GROUP_QUERY -> GroupView;
    GroupPrepared(GroupPrepared) = GROUP_PREPARED -> Done;
    ReverseBegin(ReverseBegin) = REVERSE_BEGIN -> ReverseReady;
    GroupForget(GroupForget) = GROUP_FORGET -> Done;
    MarkDirty(MarkDirty) = MARK_DIRTY -> Done;
    SyncStreamBegin(SyncStreamBegin) = SYNC_STREAM_BEGIN -> SyncStreamBegun;
    SyncSeal(SyncSeal) = SYNC_SEAL -> PitCommitted;
    GroupSetMode(GroupSetMode) = GROUP_SET_MODE -> Done;
    GroupConfirmed(Confirmed) = GROUP_CONFIRMED -> Done;
    SiteQuery(SiteQuery) = SITE_QUERY -> SiteView;
    SyncCheckpoint(SyncCheckpoint) = SYNC_CHECKPOINT -> Done;
    JournalQuery(JournalQuery) = JOURNAL_QUERY -> JournalView;
}

/// A handler's answer as a response: `(ok, body)`.
pub(crate) fn respond<R: Reply>(answer: Result<R, RemoteError>) -> (bool, Bytes) {
    match answer {
        Ok(r) => (true, r.encode()),
        Err(e) => (false, e.to_body()),
    }
}

impl Replication {
    /// The dispatch table: answers one request of partner `peer` on an
    /// accepted session (block batches that follow are routed by
    /// `transfer`). Returns the response's `ok` and body.
    pub(crate) async fn dispatch(
        self: &std::sync::Arc<Self>,
        peer: &str,
        kind: u16,
        body: Bytes,
        transfer: &mut Transfer,
    ) -> (bool, Bytes) {
        let request = match SiteRequest::decode(kind, &body) {
            Ok(r) => r,
            Err(e) => {
                let e = match e {
                    DecodeError::UnknownKind(k) => RemoteError::Unsupported(format!(
                        "request kind {k} is not supported by site {} (version {}); upgrade it",
                        self.site.config().name,
                        env!("CARGO_PKG_VERSION")
                    )),
                    e => RemoteError::from(e),
                };
                tracing::warn!(partner = %peer, kind, "refused: {e}");
                return (false, e.to_body());
            }
        };
        let name = request.name();
        use SiteRequest as R;
        let (ok, body) = match request {
            R::AuthzCheck(r) => respond(self.answer_authz(peer, r).await),
            R::GroupCreate(r) => respond(self.answer_group_create(peer, r).await),
            R::BaseBegin(r) => respond(self.answer_base_begin(peer, r, transfer).await),
            R::BaseSync(_) => respond(self.answer_base_sync(transfer).await),
            R::PitBegin(r) => respond(self.answer_pit_begin(peer, r, transfer).await),
            R::PitCommit(r) => respond(self.answer_pit_commit(r, transfer).await),
            R::Hashes(r) => respond(self.answer_hashes(peer, r).await),
            R::Sync(r) => respond(self.answer_sync(peer, r).await),
            R::GroupDelete(r) => respond(self.answer_group_delete(peer, r).await),
            R::PitRelease(r) => respond(self.answer_pit_release(peer, r).await),
            R::SeedLoad(r) => respond(self.answer_seed_load(peer, r).await),
            R::GroupQuery(r) => respond(self.answer_query(peer, r).await),
            R::GroupPrepared(r) => respond(self.answer_prepared(peer, r).await),
            R::ReverseBegin(r) => respond(self.answer_reverse(peer, r).await),
            R::GroupForget(r) => respond(self.answer_forget(peer, r).await),
            R::MarkDirty(r) => respond(self.answer_mark_dirty(peer, r).await),
            R::SyncStreamBegin(r) => respond(self.answer_stream_begin(peer, r, transfer).await),
            // Answered by the stream's thread (`serve_stream`) once the
            // session is a stream; never on a session.
            R::SyncSeal(_) => respond::<PitCommitted>(Err(RemoteError::BadRequest(
                "SYNC_SEAL outside a sync stream".into(),
            ))),
            // Likewise answered (never: it has no answer) on a stream only.
            R::SyncCheckpoint(_) => respond::<Done>(Err(RemoteError::BadRequest(
                "SYNC_CHECKPOINT outside a sync stream".into(),
            ))),
            R::JournalQuery(r) => respond(self.answer_journal_query(peer, r).await),
            R::GroupSetMode(r) => respond(self.answer_set_mode(peer, r).await),
            R::GroupConfirmed(r) => respond(self.answer_confirmed(peer, r).await),
            R::SiteQuery(_) => respond(Ok(self.site_view())),
            R::Extension { kind, body } => match self.extension.get() {
                Some(h) => {
                    let answer = h.answer(peer.to_string(), kind, body).await;
                    match answer {
                        Ok(b) => (true, b),
                        Err(e) => (false, e.to_body()),
                    }
                }
                None => (
                    false,
                    RemoteError::Unsupported(format!(
                        "request kind {kind} is not supported by site {}",
                        self.site.config().name
                    ))
                    .to_body(),
                ),
            },
        };
        if !ok {
            tracing::warn!(partner = %peer, kind, request = name, "refused: {}", RemoteError::from_body(&body));
        }
        (ok, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_refusals_are_unauthorized_and_failures_internal() {
        use offsite_engine::authz::AuthzError;
        let refused = RemoteError::from(AuthzError::NoEntry {
            site: "b".into(),
            primary: "a".into(),
        });
        assert_eq!(refused.code(), "unauthorized");
        assert!(
            refused.message().starts_with("site b refuses primary a"),
            "{refused}"
        );
        let tag = RemoteError::from(AuthzError::TagMismatch {
            site: "b".into(),
            primary: "a".into(),
            pattern: "*".into(),
            required: "gold".into(),
            presented: None,
        });
        assert_eq!(tag.code(), "unauthorized");
        assert!(tag.message().contains("presents none"), "{tag}");
        let failed = RemoteError::from(AuthzError::StorageLocation(Box::new(
            offsite_engine::EngineError::Invalid("no such directory".into()),
        )));
        assert_eq!(failed.code(), "internal");
        assert_eq!(failed.message(), "no such directory");
    }

    #[test]
    fn codes_round_trip_and_are_listed() {
        for code in RemoteError::CODES {
            let e = RemoteError::from_code(Some(code), "why".into());
            assert_eq!(e.code(), code);
            let back = RemoteError::from_body(&e.to_body());
            assert_eq!(back, e);
        }
    }

    #[test]
    fn a_v1_refusal_is_generic() {
        let v1 = br#"{"error":"group g on site b replicates from c, not from a"}"#;
        assert_eq!(
            RemoteError::from_body(v1),
            RemoteError::Refused("group g on site b replicates from c, not from a".into())
        );
        assert_eq!(
            RemoteError::from_body(b"not json"),
            RemoteError::Refused("not json".into())
        );
        // A newer peer's code this build does not know.
        let newer = br#"{"error":"x","code":"quota_exceeded"}"#;
        assert_eq!(
            RemoteError::from_body(newer),
            RemoteError::Refused("x".into())
        );
    }

    #[test]
    fn a_v2_refusal_is_readable_by_v1() {
        // The v1 decoder: a struct with `error` only (unknown fields ignored).
        #[derive(Deserialize)]
        struct V1 {
            error: String,
        }
        let body = RemoteError::StorageFull("full".into()).to_body();
        let v1: V1 = serde_json::from_slice(&body).unwrap();
        assert_eq!(v1.error, "full");
        assert_eq!(&body[..], br#"{"error":"full","code":"storage_full"}"#);
    }

    #[test]
    fn unknown_kinds_are_refused_and_extensions_pass() {
        assert!(matches!(
            SiteRequest::decode(39, b"{}"),
            Err(DecodeError::UnknownKind(39))
        ));
        assert!(matches!(
            SiteRequest::decode(0, b"{}"),
            Err(DecodeError::UnknownKind(0))
        ));
        let r = SiteRequest::decode(41, b"{\"op\":\"x\"}").unwrap();
        assert_eq!(r.kind(), 41);
        assert_eq!(r.encode(), (41, Bytes::from_static(b"{\"op\":\"x\"}")));
        let e = RemoteError::from(SiteRequest::decode(kinds::BASE_BEGIN, b"{").unwrap_err());
        assert_eq!(e.code(), "bad_request");
        assert!(e.message().starts_with("malformed request: "), "{e}");
    }

    #[test]
    fn kinds_are_unique_and_below_the_extensions() {
        let mut seen = std::collections::HashSet::new();
        for (k, name) in SiteRequest::KINDS {
            assert!(seen.insert(*k), "kind {k} ({name}) twice");
            assert!(*k > 0 && *k < EXTENSION_FIRST, "{name}");
        }
        assert_eq!(SiteRequest::KINDS.len(), 23);
    }
}
