//! Replication in one process, for the crate's tests: two real sites in a
//! temporary directory, each with its replication service, whose links to
//! each other are [`FakeLink`]s. A fake link hands every request to the
//! other site's dispatch table and every block batch to its batch path,
//! exactly as the listener's session task does, so the PITs committed are
//! real replica-store PITs; on the way it can lose the link after a number
//! of frames, lose a request or its answer, refuse, delay, duplicate or
//! hold a request, and refuse to connect, as scripted by a test
//! ([`Fault`]), or keep the partner down ([`FakePeer::set_down`]). The
//! protocol is one ordered stream per link, so nothing is reordered.
//!
//! Time is a [`FakeClock`] both sites share: lag, health and a sync
//! group's waiting writes read it, so a test moves time instead of waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use offsite_catalog::{GroupRow, GroupState};
use offsite_engine::init::{InitOptions, init_site};
use offsite_engine::{AddAuthz, AddPartner, CreateVolume, Site, Volume};
use offsite_nbd::BlockDevice;
use offsite_protocol::{BulkFrame, ErrorCode};
use offsite_transport::{DirectStream, SessionOptions, TransportError};

use crate::channel::{Link, LinkFuture, PeerLink};
use crate::clock::FakeClock;
use crate::control::RemoteError;
use crate::model::CreateGroup;
use crate::primary::{Progress, blocking};
use crate::replica_side::Transfer;
use crate::{ReplError, Replication};

/// Block size of the test volumes.
pub(crate) const BS: usize = 4096;

/// One scripted fault of a [`FakePeer`]; each fires once, in the order
/// given, when its moment comes.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// The link fails after `n` more block batches were delivered: the
    /// next one is lost with the link.
    DropAfterFrames(u64),
    /// The next request of `kind` is lost with the link before it arrives.
    DropBefore(u16),
    /// The next request of `kind` arrives and is answered, but the link
    /// fails before the answer is back.
    LoseAnswer(u16),
    /// The next request of `kind` is refused with this error (the partner
    /// never sees it).
    Refuse(u16, RemoteError),
    /// The next request of `kind` arrives twice (a retransmission): the
    /// partner answers both, the sender reads the second answer.
    Duplicate(u16),
    /// The next request of `kind` waits this long before it is delivered.
    Delay(u16, Duration),
    /// The next request of `kind` stops before it is delivered until the
    /// test opens the gate (after the gate says it was reached).
    Hold(u16, Arc<Gate>),
    /// The next request of `kind` reaches the partner without this
    /// top-level field, as to a partner built before the field existed
    /// (which ignores it, and leaves out its own answer to it).
    DropField(u16, &'static str),
    /// The next request of `kind` is answered with an empty body, as by a
    /// partner built before that reply carried fields (its `Done`).
    OldAnswer(u16),
    /// The next dial fails: the partner cannot be reached.
    Unreachable,
}

/// Where a held request waits: the test learns it arrived, does what it
/// must while the sender waits, then lets it through.
#[derive(Debug)]
pub(crate) struct Gate {
    reached: tokio::sync::Semaphore,
    open: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            reached: tokio::sync::Semaphore::new(0),
            open: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Waits until a request is held here.
    pub(crate) async fn reached(&self) {
        self.reached
            .acquire()
            .await
            .expect("the gate's semaphore is never closed")
            .forget();
    }

    /// Lets the held request through.
    pub(crate) fn open(&self) {
        self.open.add_permits(1);
    }

    async fn pass(&self) {
        self.reached.add_permits(1);
        self.open
            .acquire()
            .await
            .expect("the gate's semaphore is never closed")
            .forget();
    }
}

#[derive(Debug, Default)]
struct Script {
    faults: VecDeque<Fault>,
    /// Kinds of the requests that reached the partner, in order.
    delivered: Vec<u16>,
    /// Block batches that reached the partner.
    frames: u64,
    /// Links dialled.
    dials: u64,
    /// Every dial fails while set: the partner is down.
    down: bool,
}

/// The partner as one site's links see it: the other in-process site.
#[derive(Debug)]
pub(crate) struct FakePeer {
    /// Weak: each site's fake peer reaches the other, and a pair of
    /// strong references would keep both sites alive after the test.
    remote: std::sync::Weak<Replication>,
    /// The dialling site's name, as the partner knows it.
    caller: String,
    script: Mutex<Script>,
}

impl FakePeer {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `fault` to the script.
    pub(crate) fn inject(&self, fault: Fault) {
        self.script().faults.push_back(fault);
    }

    /// Kinds of every request that reached the partner, in order.
    pub(crate) fn delivered(&self) -> Vec<u16> {
        self.script().delivered.clone()
    }

    /// Block batches that reached the partner.
    pub(crate) fn frames(&self) -> u64 {
        self.script().frames
    }

    /// Links dialled so far.
    pub(crate) fn dials(&self) -> u64 {
        self.script().dials
    }

    /// Takes the partner down (every dial fails) or brings it back.
    pub(crate) fn set_down(&self, down: bool) {
        self.script().down = down;
    }

    /// Faults not fired yet.
    pub(crate) fn pending(&self) -> usize {
        self.script().faults.len()
    }

    /// Takes the first scripted fault that `fires` says applies now.
    fn take(&self, fires: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut s = self.script();
        let at = s.faults.iter().position(fires)?;
        s.faults.remove(at)
    }

    /// A link to the partner (what [`Replication::channel`] returns while
    /// a fake peer is installed).
    pub(crate) async fn dial(self: &Arc<Self>, partner: &str) -> Result<PeerLink, ReplError> {
        let down = {
            let mut s = self.script();
            s.dials += 1;
            s.down
        };
        if down || self.take(|f| matches!(f, Fault::Unreachable)).is_some() {
            return Err(ReplError::Transport {
                partner: partner.to_string(),
                source: TransportError::Unreachable {
                    address: format!("{partner} (fake)"),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                },
            });
        }
        Ok(Box::new(FakeLink {
            peer: self.clone(),
            partner: partner.to_string(),
            transfer: Transfer::Idle,
            lost: false,
            sent: 0,
        }))
    }
}

/// A link to the in-process partner.
struct FakeLink {
    peer: Arc<FakePeer>,
    partner: String,
    /// The partner's side of the session: which transfer batches go to.
    transfer: Transfer,
    lost: bool,
    sent: u64,
}

impl FakeLink {
    fn lost_error(&self) -> ReplError {
        ReplError::Transport {
            partner: self.partner.clone(),
            source: TransportError::Io {
                peer: self.partner.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the fake link was dropped",
                ),
            },
        }
    }

    /// The link fails: the partner ends its side as its session task does
    /// when the connection goes (a PIT being received is discarded).
    fn lose(&mut self) -> ReplError {
        self.lost = true;
        self.end_transfer();
        self.lost_error()
    }

    fn end_transfer(&mut self) {
        match std::mem::replace(&mut self.transfer, Transfer::Idle) {
            Transfer::Pit { writer, .. } => writer.abort(),
            Transfer::Log { group, .. } => {
                if let Some(remote) = self.peer.remote.upgrade() {
                    tokio::spawn(async move {
                        let _ = remote.seal_log(&group).await;
                    });
                }
            }
            Transfer::Base { .. } | Transfer::Idle => {}
        }
    }

    async fn deliver(&mut self, kind: u16, body: Bytes) -> Result<Bytes, ReplError> {
        if self.lost {
            return Err(self.lost_error());
        }
        let peer = self.peer.clone();
        let fault = peer.take(|f| match f {
            Fault::DropBefore(k)
            | Fault::LoseAnswer(k)
            | Fault::Refuse(k, _)
            | Fault::Duplicate(k)
            | Fault::Delay(k, _)
            | Fault::Hold(k, _)
            | Fault::DropField(k, _)
            | Fault::OldAnswer(k) => *k == kind,
            Fault::DropAfterFrames(_) | Fault::Unreachable => false,
        });
        let mut times = 1;
        let mut body = body;
        if let Some(Fault::DropField(_, field)) = fault {
            let mut v: serde_json::Value =
                serde_json::from_slice(&body).expect("a JSON request body");
            if let Some(o) = v.as_object_mut() {
                o.remove(field);
            }
            body = Bytes::from(serde_json::to_vec(&v).expect("JSON"));
        }
        match fault {
            Some(Fault::DropBefore(_)) => return Err(self.lose()),
            Some(Fault::Refuse(_, e)) => return Err(ReplError::Refused(e)),
            Some(Fault::Delay(_, d)) => tokio::time::sleep(d).await,
            Some(Fault::Hold(_, ref gate)) => gate.pass().await,
            Some(Fault::Duplicate(_)) => times = 2,
            _ => {}
        }
        let Some(remote) = peer.remote.upgrade() else {
            return Err(self.lose());
        };
        let mut answer = (false, Bytes::new());
        for _ in 0..times {
            peer.script().delivered.push(kind);
            answer = remote
                .dispatch(&peer.caller, kind, body.clone(), &mut self.transfer)
                .await;
        }
        if matches!(fault, Some(Fault::LoseAnswer(_))) {
            return Err(self.lose());
        }
        if matches!(fault, Some(Fault::OldAnswer(_))) && answer.0 {
            answer.1 = Bytes::new();
        }
        match answer {
            (true, body) => Ok(body),
            (false, body) => Err(ReplError::Refused(RemoteError::from_body(&body))),
        }
    }

    fn deliver_batch(&mut self, payload: Vec<u8>) -> Result<(), ReplError> {
        if self.lost {
            return Err(self.lost_error());
        }
        self.sent += payload.len() as u64;
        let peer = self.peer.clone();
        let mut s = peer.script();
        let drop_at = s
            .faults
            .iter()
            .position(|f| matches!(f, Fault::DropAfterFrames(_)));
        if let Some(at) = drop_at
            && let Some(Fault::DropAfterFrames(n)) = s.faults.get_mut(at)
        {
            if *n == 0 {
                s.faults.remove(at);
                drop(s);
                return Err(self.lose());
            }
            *n -= 1;
        }
        s.frames += 1;
        drop(s);
        if matches!(self.transfer, Transfer::Idle) {
            return Ok(());
        }
        let Some(remote) = peer.remote.upgrade() else {
            return Err(self.lose());
        };
        // As the listener's session task: a refused batch ends the
        // transfer; a full store keeps the session, anything else ends it.
        if let Err(e) = remote.apply_batch(&payload, &mut self.transfer) {
            if let Transfer::Pit { writer, .. } =
                std::mem::replace(&mut self.transfer, Transfer::Idle)
            {
                writer.abort();
            }
            let code = if e.storage_full {
                ErrorCode::StorageFull
            } else {
                self.lost = true;
                ErrorCode::Internal
            };
            return Err(ReplError::Refused(RemoteError::from_message_error(
                code, e.message,
            )));
        }
        Ok(())
    }
}

impl Drop for FakeLink {
    fn drop(&mut self) {
        self.end_transfer();
    }
}

impl Link for FakeLink {
    fn partner(&self) -> &str {
        &self.partner
    }

    fn request(&mut self, kind: u16, body: Bytes) -> LinkFuture<'_, Result<Bytes, ReplError>> {
        Box::pin(self.deliver(kind, body))
    }

    fn send_batch(&mut self, payload: Vec<u8>) -> LinkFuture<'_, Result<(), ReplError>> {
        let r = self.deliver_batch(payload);
        Box::pin(async move { r })
    }

    fn send_records(&mut self, frame: BulkFrame) -> LinkFuture<'_, Result<(), ReplError>> {
        let r = self.deliver_batch(frame.payload().to_vec());
        Box::pin(async move { r })
    }

    fn sent(&self) -> u64 {
        self.sent
    }

    fn close(self: Box<Self>) -> LinkFuture<'static, ()> {
        // Dropping it ends the partner's side.
        drop(self);
        Box::pin(async {})
    }

    fn into_direct(self: Box<Self>) -> LinkFuture<'static, Result<DirectStream, ReplError>> {
        let partner = self.partner.clone();
        Box::pin(async move {
            Err(ReplError::Protocol {
                partner,
                why: "a fake link has no connection to hand to a sync stream".into(),
            })
        })
    }
}

/// Two sites, `a` (the primary of the groups the tests make) and `b`,
/// paired and authorized both ways, linked by fake peers.
pub(crate) struct Pair {
    pub(crate) a: Arc<Replication>,
    pub(crate) b: Arc<Replication>,
    /// What `a`'s links reach (site `b`).
    pub(crate) to_b: Arc<FakePeer>,
    /// What `b`'s links reach (site `a`).
    pub(crate) to_a: Arc<FakePeer>,
    pub(crate) clock: Arc<FakeClock>,
    // Last: the sites' files go after the sites.
    tmp: tempfile::TempDir,
}

fn site(dir: &std::path::Path, name: &str) -> Arc<Site> {
    init_site(
        dir,
        &InitOptions {
            name: name.into(),
            listen: "127.0.0.1:0".into(),
            api: "127.0.0.1:0".into(),
            nbd: "127.0.0.1:0".into(),
            api_tls: Default::default(),
        },
    )
    .expect("initializing a test site");
    Site::open(dir).expect("opening a test site")
}

impl Pair {
    pub(crate) fn new() -> Pair {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let sa = site(&tmp.path().join("a"), "a");
        let sb = site(&tmp.path().join("b"), "b");
        for (here, there) in [(&sa, &sb), (&sb, &sa)] {
            let name = there.config().name.clone();
            here.add_partner(&AddPartner {
                name: name.clone(),
                // Never dialled: links go through the fake peer.
                address: "127.0.0.1:9".into(),
                fingerprint: there.fingerprint().to_string(),
            })
            .expect("pairing the test sites");
            let store = tmp.path().join(format!("{}-replicas", here.config().name));
            here.add_authz(&AddAuthz {
                allowed_primary: name,
                storage_location: store.to_string_lossy().into_owned(),
                security_tag: None,
            })
            .expect("authorizing the test partner");
        }
        let clock = Arc::new(FakeClock::new());
        let service = |site: Arc<Site>| {
            let mut r = Replication::new(site, SessionOptions::default())
                .expect("the replication service of a test site");
            Arc::get_mut(&mut r)
                .expect("a fresh service has one owner")
                .clock = clock.clone();
            r
        };
        let (a, b) = (service(sa), service(sb));
        let fake = |remote: &Arc<Replication>, caller: &str| {
            Arc::new(FakePeer {
                remote: Arc::downgrade(remote),
                caller: caller.into(),
                script: Mutex::new(Script::default()),
            })
        };
        let (to_b, to_a) = (fake(&b, "a"), fake(&a, "b"));
        a.fake_peer
            .set(to_b.clone())
            .expect("one fake peer per site");
        b.fake_peer
            .set(to_a.clone())
            .expect("one fake peer per site");
        Pair {
            a,
            b,
            to_b,
            to_a,
            clock,
            tmp,
        }
    }

    /// Where files of the test may go.
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.tmp.path()
    }

    /// A volume of `blocks` blocks on site `a`.
    pub(crate) fn volume(&self, name: &str, blocks: u64) -> Arc<Volume> {
        self.a
            .site
            .create_volume(&CreateVolume {
                name: name.into(),
                size_bytes: Some(blocks * BS as u64),
                block_size: None,
                import_path: None,
            })
            .expect("creating a test volume");
        self.a.site.volume(name).expect("the test volume")
    }

    /// Group `name` of `volumes`, created at `a` through the fake link
    /// (the replica validates and creates its side), async, keeping `keep`
    /// PITs, RPO 60 s.
    pub(crate) async fn group(&self, name: &str, volumes: &[&str], keep: u32) -> GroupRow {
        self.a
            .create_group(CreateGroup {
                name: name.into(),
                partner: "b".into(),
                vms: Vec::new(),
                volumes: volumes.iter().map(|v| v.to_string()).collect(),
                mode: "async".into(),
                rpo_secs: 60,
                keep,
                bandwidth_bytes_per_sec: None,
                compress: Some(false),
                security_tag: None,
                on_link_loss: None,
                suspend_timeout_secs: None,
                app_consistent_every_secs: None,
                checkpoint_interval_ms: None,
                journal_history_secs: None,
                journal_max_bytes: None,
                encrypt: false,
            })
            .await
            .expect("creating the test group");
        self.row(&self.a, name)
    }

    /// The catalog row of `group` at `site`.
    pub(crate) fn row(&self, site: &Replication, group: &str) -> GroupRow {
        site.site.groups().get(group).expect("the test group's row")
    }

    /// `group start` without a runner: what `start_group` records, then
    /// initial replication run here, to its end or its first failure.
    pub(crate) async fn begin_initial(&self, group: &str) -> Result<(), ReplError> {
        self.begin_initial_from(group, None).await
    }

    /// [`Pair::begin_initial`] from the seed at `seed`, if any.
    pub(crate) async fn begin_initial_from(
        &self,
        group: &str,
        seed: Option<String>,
    ) -> Result<(), ReplError> {
        let site = self.a.site.clone();
        let n = group.to_string();
        if self.row(&self.a, group).state == GroupState::ReadyForInitialReplication {
            blocking(move || {
                let g = site.groups().get(&n)?;
                for v in &g.volumes {
                    site.volume(&v.volume)?.tracker().clear()?;
                }
                site.groups().set_seed(&n, seed.as_deref())?;
                site.move_group_state(
                    &n,
                    &[GroupState::ReadyForInitialReplication],
                    GroupState::InitialReplication,
                    None,
                )
                .map(drop)
            })
            .await?;
        }
        let row = self.row(&self.a, group);
        self.a.initial_replication(&row, &Progress::default()).await
    }

    /// A group replicating with its first PIT committed.
    pub(crate) async fn replicating(&self, name: &str, volumes: &[&str], keep: u32) -> GroupRow {
        self.group(name, volumes, keep).await;
        self.begin_initial(name)
            .await
            .expect("initial replication of the test group");
        let row = self.row(&self.a, name);
        assert_eq!(row.state, GroupState::Replicating);
        self.a
            .cycle(&row, None, false)
            .await
            .expect("the first cycle");
        self.row(&self.a, name)
    }

    /// One cycle of `group` at `a`: the committed PIT's id.
    pub(crate) async fn cycle(&self, group: &str) -> Result<u64, ReplError> {
        let row = self.row(&self.a, group);
        self.a.cycle(&row, None, false).await.map(|(p, _)| p.id)
    }

    /// PIT ids of `group` in `b`'s replica store, oldest first.
    pub(crate) async fn replica_pits(&self, group: &str) -> Vec<u64> {
        let (_, store) = self.b.store(group).await.expect("the replica store");
        store.pits().iter().map(|p| p.id.get()).collect()
    }

    /// BLAKE3 of every block of each volume of `group` in PIT `pit` at `b`.
    pub(crate) async fn replica_image(&self, group: &str, pit: u64) -> Vec<Vec<[u8; 32]>> {
        let (row, store) = self.b.store(group).await.expect("the replica store");
        let id = offsite_replica_store::PitId::new(pit).expect("a PIT id");
        row.volumes
            .iter()
            .map(|v| {
                store
                    .block_hashes(Some(id), &v.volume, 0..v.size_bytes / BS as u64)
                    .expect("hashing the replica's blocks")
            })
            .collect()
    }

    /// BLAKE3 of every block of each volume of `group` at `a`, now.
    pub(crate) fn primary_image(&self, group: &str) -> Vec<Vec<[u8; 32]>> {
        self.row(&self.a, group)
            .volumes
            .iter()
            .map(|v| hash_volume(&self.a.site.volume(&v.volume).expect("volume")))
            .collect()
    }
}

/// BLAKE3 of every block of `v`.
pub(crate) fn hash_volume(v: &Volume) -> Vec<[u8; 32]> {
    let blocks = v.row().size_bytes / BS as u64;
    let mut buf = vec![0u8; BS];
    (0..blocks)
        .map(|b| {
            v.read_at(&mut buf, b * BS as u64).expect("reading a block");
            *blake3::hash(&buf).as_bytes()
        })
        .collect()
}

/// Writes block `block` of `v` full of `byte`.
pub(crate) fn write(v: &Volume, block: u64, byte: u8) {
    v.write_at(&[byte; BS], block * BS as u64, false)
        .expect("writing a test block");
}

mod cycle;
mod encrypt;
mod failover;
mod health;
mod initial;
mod quiesce;
mod recover_at;
mod runner;
mod settings;
mod verify;
