//! Golden JSON of every site-to-site request body and reply
//! (`tests/fixtures/control/*.json`), checked both ways: the typed value
//! encodes to the fixture's bytes, and the fixture decodes (as the kind it
//! is filed under) to a value that encodes to the same bytes again.
//!
//! The request fixtures were captured from the v1 code (before the
//! control plane was typed), so they are what an un-upgraded peer sends
//! and reads. If this test fails, the wire changed: an un-upgraded peer
//! would no longer understand this site. Add an optional field or a new
//! kind (and a line in `offsite_replication::control`'s changelog) instead of
//! changing a fixture. `OFFSITE_BLESS=1` writes missing fixtures.

use bytes::Bytes;
use offsite_replication::AuthzCheckBody;
use offsite_replication::control::{
    AuthzGrant, BaseBegin, BaseSync, Confirmed, DecodeError, Done, GroupCreate, GroupCreated,
    GroupDelete, GroupForget, GroupPrepared, GroupQuery, GroupSetMode, GroupView, HashList, Hashes,
    MarkDirty, PitBegin, PitBegun, PitCommit, PitCommitted, PitRelease, RemoteError, Reply,
    ReverseBegin, ReverseReady, Rpc, SeedLoad, SiteQuery, SiteRequest, SiteView, SyncCheckpoint,
    SyncDone, SyncRequest, SyncSeal, SyncStreamBegin, SyncStreamBegun,
};
use offsite_replication::control::{JournalQuery, JournalView};
use offsite_replication::wire::{
    CheckpointDesc, JournalDesc, JournalWindow, KeyLine, PitDesc, VmDesc, VolumeDesc,
};

fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/control")
        .join(name)
}

/// The fixture's bytes (one line of JSON; the final newline is not part
/// of the body). Missing and `OFFSITE_BLESS` set: written from `bytes`.
fn fixture(name: &str, bytes: &[u8]) -> Vec<u8> {
    let p = path(name);
    if !p.exists() && std::env::var_os("OFFSITE_BLESS").is_some() {
        let mut text = bytes.to_vec();
        text.push(b'\n');
        std::fs::write(&p, text).unwrap();
    }
    let mut text = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    text
}

/// A request: encodes to its fixture, and the fixture decodes to it.
fn request<R: Rpc + Clone + Into<SiteRequest>>(value: R) {
    let file = format!("{:02}-{}.json", R::KIND, R::NAME.to_lowercase());
    let typed: SiteRequest = value.clone().into();
    let (kind, body) = typed.encode();
    assert_eq!(kind, R::KIND);
    let golden = fixture(&file, &body);
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&golden),
        "{file}: the encoding changed"
    );
    let decoded = SiteRequest::decode(R::KIND, &golden).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(decoded.kind(), R::KIND);
    assert_eq!(decoded.name(), R::NAME);
    assert_eq!(decoded.encode(), (R::KIND, Bytes::from(golden)), "{file}");
}

/// A reply: likewise.
fn reply<R: Reply>(file: &str, value: R) {
    let body = value.encode();
    let golden = fixture(file, &body);
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&golden),
        "{file}: the encoding changed"
    );
    let back = R::decode(&golden).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(back.encode(), Bytes::from(golden), "{file}");
}

fn pit(id: u64, name: Option<&str>) -> PitDesc {
    PitDesc {
        id,
        name: name.map(str::to_string),
        created_at: "2025-01-02T03:04:05Z".into(),
        bytes: 65536,
        app_consistent: false,
    }
}

fn vm() -> VmDesc {
    VmDesc {
        name: "web".into(),
        volumes: vec!["d0".into(), "d1".into()],
        start: Some("virsh start web".into()),
        stop: Some("virsh shutdown web".into()),
        status: None,
        libvirt_xml: None,
        quiesce: None,
        thaw: None,
    }
}

fn commit() -> PitCommit {
    PitCommit {
        group: "g".into(),
        name: Some("before-upgrade".into()),
        created_at: "2025-01-02T03:04:05Z".into(),
        blocks: 42,
        app_consistent: false,
    }
}

#[test]
fn every_request_body_matches_its_fixture() {
    request(AuthzCheckBody {
        security_tag: Some("gold".into()),
    });
    request(GroupCreate {
        group: "g".into(),
        mode: "async".into(),
        rpo_secs: 300,
        keep: 24,
        security_tag: None,
        on_link_loss: "degrade".into(),
        suspend_timeout_secs: 30,
        volumes: vec![
            VolumeDesc {
                name: "d0".into(),
                size_bytes: 1 << 30,
                block_size: 4096,
                allocated_bytes: Some(1 << 20),
            },
            VolumeDesc {
                name: "d1".into(),
                size_bytes: 1 << 20,
                block_size: 4096,
                allocated_bytes: None,
            },
        ],
        vms: vec![vm()],
        bandwidth: Some(10 << 20),
        compress: true,
        app_consistent_every_secs: 0,
        journal: None,
        pits_after: 0,
        key: None,
    });
    request(BaseBegin::new("g"));
    request(BaseSync::new("g"));
    request(PitBegin::new("g"));
    request(commit());
    request(Hashes {
        group: "g".into(),
        pit: Some(7),
        volume: 1,
        first: 256,
        count: 128,
        base: false,
    });
    request(SyncRequest {
        group: "g".into(),
        pit_name: Some("nightly".into()),
        wait: true,
        quiesce: false,
    });
    request(GroupDelete {
        group: "g".into(),
        delete_replica: true,
    });
    request(PitRelease {
        group: "g".into(),
        pit: "nightly".into(),
    });
    request(SeedLoad {
        group: "g".into(),
        path: "/media/seed/g".into(),
    });
    request(GroupQuery::new("g"));
    request(GroupPrepared {
        group: "g".into(),
        pit: 9,
    });
    request(ReverseBegin {
        group: "g".into(),
        pit: 9,
        discard_isolated: false,
        last_pit: 11,
    });
    request(GroupForget {
        group: "g".into(),
        delete_replica: false,
    });
    request(MarkDirty {
        group: "g".into(),
        blocks: vec![vec![1, 2, 3], vec![]],
    });
    request(SyncStreamBegin::new("g"));
    request(SyncSeal(PitCommit {
        blocks: 0,
        ..commit()
    }));
    request(GroupSetMode {
        group: "g".into(),
        mode: "sync".into(),
        rpo_secs: Some(60),
        keep: None,
        bandwidth: Some(0),
        compress: Some(false),
        vm: Some(vm()),
        app_consistent_every_secs: None,
        journal: None,
    });
    request(Confirmed {
        groups: vec![("g".into(), "2025-01-02T03:04:05Z".into())],
    });
    request(SiteQuery {});
    request(SyncCheckpoint {
        group: "g".into(),
        time_ns: 1_735_787_045_123_456_789,
        app_consistent: false,
        name: None,
    });
    request(JournalQuery {
        group: "g".into(),
        every: true,
    });
    // One fixture per kind of the changelog table.
    let files = std::fs::read_dir(path(""))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.as_bytes()[0].is_ascii_digit())
        .count();
    assert_eq!(files, SiteRequest::KINDS.len());
}

#[test]
fn every_reply_matches_its_fixture() {
    reply(
        "reply-authz-grant.json",
        AuthzGrant {
            partner: "site-b".into(),
            storage_location: "/srv/replicas".into(),
            rule: "site-a".into(),
        },
    );
    reply(
        "reply-group-created.json",
        GroupCreated {
            store_dir: "/srv/replicas/site-a/g".into(),
            rule: "site-a".into(),
            encrypted: false,
        },
    );
    reply(
        "reply-pit-committed.json",
        PitCommitted {
            pit: pit(8, Some("nightly")),
            pits: vec![pit(7, None), pit(8, Some("nightly"))],
            last_drill_at: None,
            journal: None,
        },
    );
    // Since schema v14 a replica also says when the group was last
    // drilled; the answer without it (above) still decodes.
    reply(
        "reply-pit-committed-drill.json",
        PitCommitted {
            pit: pit(8, None),
            pits: vec![pit(8, None)],
            last_drill_at: Some("2025-01-02T04:00:00Z".into()),
            journal: None,
        },
    );
    reply(
        "reply-site-view.json",
        SiteView {
            name: "site-b".into(),
            console_url: Some("https://dr.example.com:8443/".into()),
        },
    );
    reply(
        "reply-sync-done.json",
        SyncDone {
            pit: Some(pit(8, None)),
            errors: Vec::new(),
        },
    );
    reply(
        "reply-group-view.json",
        GroupView {
            role: "primary".into(),
            state: "replicating".into(),
            partner: "site-b".into(),
            unreplicated_bytes: 4096,
            isolated_bytes: 0,
            newest_pit: Some(8),
        },
    );
    reply(
        "reply-reverse-ready.json",
        ReverseReady {
            unreplicated: vec![vec![5, 6]],
            store_dir: "/srv/replicas/site-b/g".into(),
            kept_as_pit: None,
            resumed: true,
            pits: vec![pit(9, Some("planned-failover"))],
            bandwidth: Some(0),
            compress: Some(true),
        },
    );
    reply(
        "reply-refusal.json",
        RemoteErrorBody(RemoteError::StorageFull(
            "no space left for group g on site site-b".into(),
        )),
    );
    // Empty and raw replies.
    assert!(Done.encode().is_empty());
    assert_eq!(Done::decode(b"").unwrap(), Done);
    let hashes = HashList(Bytes::from(vec![7u8; 64]));
    assert_eq!(HashList::decode(&hashes.encode()).unwrap(), hashes);
    assert!(matches!(
        HashList::decode(&[0u8; 33]),
        Err(DecodeError::Length(_))
    ));
}

/// A refusal's body, as a [`Reply`] for the fixture check.
struct RemoteErrorBody(RemoteError);

impl Reply for RemoteErrorBody {
    fn encode(&self) -> Bytes {
        self.0.to_body()
    }
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Ok(RemoteErrorBody(RemoteError::from_body(body)))
    }
}

/// Bodies as v1 peers wrote them (optional fields absent) decode with the
/// defaults the v1 code gave them.
#[test]
fn v1_bodies_without_later_fields_decode() {
    let old_create = br#"{"group":"g","mode":"async","rpo_secs":300,"keep":24,"security_tag":null,"volumes":[{"name":"d0","size_bytes":4096,"block_size":4096}]}"#;
    let SiteRequest::GroupCreate(c) = SiteRequest::decode(2, old_create).unwrap() else {
        panic!("GROUP_CREATE");
    };
    assert_eq!(c.on_link_loss, "degrade");
    assert_eq!(c.suspend_timeout_secs, 30);
    assert!(c.compress && c.vms.is_empty() && c.bandwidth.is_none());
    // GROUP_DELETE as the v1 primary's undo of a failed create sent it.
    let SiteRequest::GroupDelete(d) = SiteRequest::decode(9, br#"{"group":"g"}"#).unwrap() else {
        panic!("GROUP_DELETE");
    };
    assert!(!d.delete_replica);
    let SiteRequest::ReverseBegin(r) =
        SiteRequest::decode(14, br#"{"group":"g","pit":3}"#).unwrap()
    else {
        panic!("REVERSE_BEGIN");
    };
    assert_eq!((r.last_pit, r.discard_isolated), (0, false));
    let ready = ReverseReady::decode(br#"{"unreplicated":[[1]],"store_dir":"/x"}"#).unwrap();
    assert!(!ready.resumed && ready.pits.is_empty() && ready.bandwidth.is_none());
    // A v1 refusal has no code.
    assert_eq!(
        RemoteError::from_body(br#"{"error":"group g is not a replica"}"#).code(),
        "refused"
    );
}

/// A body of a kind that already has its fixture, in a later form: pinned
/// by a fixture of its own (`quiesce-*.json`: the request fixtures named
/// by kind stay those an older peer sends), and it decodes as that kind.
fn request_as<R: Rpc + Clone + Into<SiteRequest>>(file: &str, value: R) {
    let typed: SiteRequest = value.into();
    let (kind, body) = typed.encode();
    assert_eq!(kind, R::KIND);
    let golden = fixture(file, &body);
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&golden),
        "{file}: the encoding changed"
    );
    let decoded = SiteRequest::decode(R::KIND, &golden).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(decoded.encode(), (R::KIND, Bytes::from(golden)), "{file}");
}

/// Application-consistent checkpoints (schema v15) add optional fields:
/// a VM's quiesce and thaw hooks, the mark of a PIT, a group's schedule,
/// `sync --quiesce` and its failures. Each is left out at its default, so
/// the fixtures above (what older peers send and read) are unchanged; set,
/// they are pinned here; and a body without them decodes to the default.
#[test]
fn app_consistent_checkpoint_fields_are_optional() {
    let quiesced = VmDesc {
        quiesce: Some("fsfreeze -f /srv".into()),
        thaw: Some("fsfreeze -u /srv".into()),
        ..vm()
    };
    request_as(
        "quiesce-02-group_create.json",
        GroupCreate {
            group: "g".into(),
            mode: "async".into(),
            rpo_secs: 300,
            keep: 24,
            security_tag: None,
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            volumes: vec![VolumeDesc {
                name: "d0".into(),
                size_bytes: 1 << 30,
                block_size: 4096,
                allocated_bytes: None,
            }],
            vms: vec![quiesced.clone()],
            bandwidth: None,
            compress: true,
            app_consistent_every_secs: 3600,
            journal: None,
            pits_after: 0,
            key: None,
        },
    );
    request_as(
        "quiesce-06-pit_commit.json",
        PitCommit {
            app_consistent: true,
            ..commit()
        },
    );
    request_as(
        "quiesce-08-sync.json",
        SyncRequest {
            group: "g".into(),
            pit_name: None,
            wait: true,
            quiesce: true,
        },
    );
    request_as(
        "quiesce-18-sync_seal.json",
        SyncSeal(PitCommit {
            blocks: 0,
            app_consistent: true,
            ..commit()
        }),
    );
    request_as(
        "quiesce-19-group_set_mode.json",
        GroupSetMode {
            group: "g".into(),
            mode: "async".into(),
            rpo_secs: None,
            keep: None,
            bandwidth: None,
            compress: None,
            vm: Some(quiesced),
            app_consistent_every_secs: Some(0),
            journal: None,
        },
    );
    let marked = PitDesc {
        app_consistent: true,
        ..pit(8, None)
    };
    reply(
        "reply-pit-committed-app-consistent.json",
        PitCommitted {
            pit: marked.clone(),
            pits: vec![pit(7, None), marked.clone()],
            last_drill_at: None,
            journal: None,
        },
    );
    reply(
        "reply-sync-done-quiesce-failed.json",
        SyncDone {
            pit: Some(pit(9, None)),
            errors: vec!["the quiesce hook of VM web exited with 1 after 12 ms".into()],
        },
    );
    // Without the fields (an older peer's bodies): the defaults.
    let SiteRequest::PitCommit(c) = SiteRequest::decode(
        6,
        br#"{"group":"g","name":null,"created_at":"t","blocks":1}"#,
    )
    .unwrap() else {
        panic!("PIT_COMMIT");
    };
    assert!(!c.app_consistent);
    let SiteRequest::GroupCreate(g) =
        SiteRequest::decode(2, &std::fs::read(path("02-group_create.json")).unwrap()).unwrap()
    else {
        panic!("GROUP_CREATE");
    };
    assert_eq!(g.app_consistent_every_secs, 0);
    assert_eq!(
        (g.vms[0].quiesce.clone(), g.vms[0].thaw.clone()),
        (None, None)
    );
    let SiteRequest::Sync(s) =
        SiteRequest::decode(8, &std::fs::read(path("08-sync.json")).unwrap()).unwrap()
    else {
        panic!("SYNC");
    };
    assert!(!s.quiesce);
    let done =
        PitCommitted::decode(&std::fs::read(path("reply-pit-committed.json")).unwrap()).unwrap();
    assert!(done.pits.iter().all(|p| !p.app_consistent));
    let done = SyncDone::decode(&std::fs::read(path("reply-sync-done.json")).unwrap()).unwrap();
    assert!(done.errors.is_empty());
}

/// The journal of streaming groups (issue 19) adds optional fields (the
/// group's journal settings in `GROUP_CREATE` and `GROUP_SET_MODE`, the
/// window in `PitCommitted`), the reply of `SYNC_STREAM_BEGIN` (empty
/// before: an older replica's reads as "no checkpoints"), and kinds 22
/// and 23 (pinned with the others above).
#[test]
fn journal_fields_are_optional() {
    let journal = JournalDesc {
        checkpoint_interval_ms: 1000,
        history_secs: 86_400,
        max_bytes: 10 << 30,
    };
    request_as(
        "journal-02-group_create.json",
        GroupCreate {
            group: "g".into(),
            mode: "sync".into(),
            rpo_secs: 300,
            keep: 24,
            security_tag: None,
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            volumes: vec![VolumeDesc {
                name: "d0".into(),
                size_bytes: 1 << 30,
                block_size: 4096,
                allocated_bytes: None,
            }],
            vms: Vec::new(),
            bandwidth: None,
            compress: true,
            app_consistent_every_secs: 0,
            journal: Some(journal),
            pits_after: 0,
            key: None,
        },
    );
    request_as(
        "journal-19-group_set_mode.json",
        GroupSetMode {
            group: "g".into(),
            mode: "sync".into(),
            rpo_secs: Some(300),
            keep: Some(24),
            bandwidth: Some(0),
            compress: Some(true),
            vm: None,
            app_consistent_every_secs: None,
            journal: Some(JournalDesc {
                max_bytes: 1 << 30,
                ..journal
            }),
        },
    );
    reply(
        "reply-pit-committed-journal.json",
        PitCommitted {
            pit: pit(8, None),
            pits: vec![pit(8, None)],
            last_drill_at: None,
            journal: Some(JournalWindow {
                oldest_ns: 1_735_787_045_000_000_000,
                newest_ns: 1_735_790_645_000_000_000,
                count: 3601,
            }),
        },
    );
    reply(
        "reply-sync-stream-begun.json",
        SyncStreamBegun { checkpoints: true },
    );
    // An older replica's answer to SYNC_STREAM_BEGIN: empty (`Done`).
    assert_eq!(
        SyncStreamBegun::decode(b"").unwrap(),
        SyncStreamBegun { checkpoints: false }
    );
    reply(
        "reply-pit-begun.json",
        PitBegun {
            record_batches: true,
        },
    );
    // An older replica's answer to PIT_BEGIN: empty (`Done`), so one run
    // per batch; and an older primary reads this one as `Done`.
    assert_eq!(
        PitBegun::decode(b"").unwrap(),
        PitBegun {
            record_batches: false
        }
    );
    assert_eq!(Done::decode(br#"{"record_batches":true}"#).unwrap(), Done);
    let ck = |id: u64, consistency: &str, name: Option<&str>| CheckpointDesc {
        id,
        time_ns: 1_735_787_045_000_000_000 + id * 1_000_000_000,
        consistency: consistency.into(),
        name: name.map(str::to_string),
        follows: Some(7),
    };
    reply(
        "reply-journal-view.json",
        JournalView {
            count: 2,
            application_consistent: 1,
            oldest: Some(ck(1, "crash", None)),
            newest: Some(ck(2, "application", Some("before-upgrade"))),
            files: 1,
            bytes: 1 << 20,
            checkpoints: vec![
                ck(1, "crash", None),
                ck(2, "application", Some("before-upgrade")),
            ],
        },
    );
    // Without the fields: none (the primary keeps the defaults; the
    // replica keeps the defaults too and shows no window at the primary).
    let SiteRequest::GroupCreate(g) =
        SiteRequest::decode(2, &std::fs::read(path("02-group_create.json")).unwrap()).unwrap()
    else {
        panic!("GROUP_CREATE");
    };
    assert!(g.journal.is_none());
    let committed =
        PitCommitted::decode(&std::fs::read(path("reply-pit-committed.json")).unwrap()).unwrap();
    assert!(committed.journal.is_none());
}

/// A group re-created at a rebuilt partner (`partner replace`, then
/// `reverse`) carries the id its PITs end at; left out at 0, so the
/// fixtures above are unchanged and an older replica numbers from 1.
#[test]
fn a_group_re_created_at_a_rebuilt_partner_carries_its_last_pit_id() {
    request_as(
        "rebuilt-02-group_create.json",
        GroupCreate {
            group: "g".into(),
            mode: "async".into(),
            rpo_secs: 300,
            keep: 24,
            security_tag: None,
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            volumes: vec![VolumeDesc {
                name: "d0".into(),
                size_bytes: 1 << 30,
                block_size: 4096,
                allocated_bytes: Some(1 << 20),
            }],
            vms: vec![vm()],
            bandwidth: None,
            compress: true,
            app_consistent_every_secs: 0,
            journal: None,
            pits_after: 41,
            key: None,
        },
    );
}

/// An encrypted group's `GROUP_CREATE` carries the group's key (its export
/// line) and the replica's answer says it keeps it (`encrypted`); both are
/// left out for a plain group, so the fixtures above are unchanged. An
/// older replica's answer has no `encrypted`: it reads as false, and the
/// primary undoes the group rather than replicate in the clear.
#[test]
fn an_encrypted_group_carries_its_key_and_the_replica_acknowledges_it() {
    let key = offsite_objects::GroupKey::from_bytes([7; 32]).export();
    request_as(
        "encrypted-02-group_create.json",
        GroupCreate {
            group: "g".into(),
            mode: "async".into(),
            rpo_secs: 300,
            keep: 24,
            security_tag: None,
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            volumes: vec![VolumeDesc {
                name: "d0".into(),
                size_bytes: 1 << 30,
                block_size: 4096,
                allocated_bytes: Some(1 << 20),
            }],
            vms: Vec::new(),
            bandwidth: None,
            compress: true,
            app_consistent_every_secs: 0,
            journal: None,
            pits_after: 0,
            key: Some(KeyLine(key)),
        },
    );
    reply(
        "reply-group-created-encrypted.json",
        GroupCreated {
            store_dir: "/srv/data/object-stores/site-a/g".into(),
            rule: "site-a".into(),
            encrypted: true,
        },
    );
    let SiteRequest::GroupCreate(c) = SiteRequest::decode(
        2,
        &std::fs::read(path("encrypted-02-group_create.json")).unwrap(),
    )
    .unwrap() else {
        panic!("GROUP_CREATE");
    };
    assert!(
        !format!("{c:?}").contains("offsite-key-1"),
        "Debug hides the key"
    );
    let old = GroupCreated::decode(br#"{"store_dir":"/x","rule":"r"}"#).unwrap();
    assert!(!old.encrypted);
}
