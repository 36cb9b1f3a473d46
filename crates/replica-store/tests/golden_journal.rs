//! Golden files of the journal. `tests/fixtures/journal-v2/` is a small
//! store whose write log was sealed once: a sealed journal file with its
//! index, and the open file. The writer must reproduce them byte for byte
//! (a format change breaks this test, not a customer), the fields must sit
//! where the module docs (`src/journal.rs`) say, and the fixture must open,
//! list its checkpoints and read them back.
//!
//! `tests/fixtures/log-v1/` is a version 1 write log (`sync.log`, written by
//! the last build before the journal, with PIT 1 and records after it): an
//! existing sync group's log must still open, its writes copied into the
//! journal and sealed.
//!
//! To regenerate the journal fixture after a deliberate format change
//! (with a new version number):
//! `OFFSITE_REGEN_FIXTURES=1 cargo test -p offsite-replica-store --test golden_journal`.
//! The version 1 fixture cannot be regenerated: no writer of it is left.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{copy_tree, fast_tmpdir};
use offsite_replica_store::{
    CheckpointId, Consistency, History, JOURNAL_HEADER_LEN, Listing, LogRecord, PitId,
    ReplicaStore, VolumeSpec, decode_records, encode_record,
};

const UUID: [u8; 16] = *b"offsite-golden-3";
const T1: u64 = 1_767_225_600_000_000_000;
const CREATED: &str = "2026-01-01T00:00:00Z";
const PIT1: &str = "pits/00000000000000000001-00000000000000000001";
const J1: &str = "journal/00000000000000000001.jnl";
const J1_INDEX: &str = "journal/00000000000000000001.idx";
const J2: &str = "journal/00000000000000000002.jnl";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v2")
}

fn v1_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1")
}

fn specs() -> Vec<VolumeSpec> {
    vec![
        VolumeSpec {
            name: "a".into(),
            size_bytes: 8 * 512,
            block_size: 512,
        },
        VolumeSpec {
            name: "b".into(),
            size_bytes: 4 * 4096,
            block_size: 4096,
        },
    ]
}

/// A batch of `(seq, volume, first, fill per block or 0 for zeroes)`.
fn batch(writes: &[(u64, u16, u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(seq, volume, first, fills) in writes {
        let bs = if volume == 0 { 512 } else { 4096 };
        let data: Vec<u8> = fills.iter().flat_map(|&f| vec![f; bs]).collect();
        encode_record(
            &LogRecord {
                seq,
                volume,
                first,
                count: fills.len() as u32,
                data: (fills[0] != 0).then_some(&data[..]),
            },
            &mut out,
        );
    }
    out
}

/// Writes the golden store into `dir`; returns the open file's length.
fn write_golden(dir: &Path) -> u64 {
    let store = ReplicaStore::create_with_uuid(dir, &specs(), UUID).unwrap();
    store.write_base("a", 0, &[0xAB; 512]).unwrap();
    store.sync_base().unwrap();
    let mut log = store.open_log().unwrap();
    log.set_history(History::Keep);
    let raw = batch(&[(1, 0, 1, &[0x11, 0x12]), (2, 1, 3, &[0x21])]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    log.checkpoint(T1, Consistency::Crash, None).unwrap();
    let raw = batch(&[(3, 0, 0, &[0])]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    log.checkpoint(
        T1 + 1_000_000_000,
        Consistency::Application,
        Some("app-1".into()),
    )
    .unwrap();
    log.seal(Some("s1".into()), CREATED.into()).unwrap();
    let raw = batch(&[(4, 0, 2, &[0x31])]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    log.checkpoint(T1 + 2_000_000_000, Consistency::Crash, None)
        .unwrap();
    log.bytes()
}

/// The files of the fixture and how many of their bytes count (the open
/// file runs on in zeroes).
fn fixture_files(open_len: u64) -> Vec<(String, Option<u64>)> {
    vec![
        ("store.meta".into(), None),
        ("base/a.img".into(), None),
        ("base/b.img".into(), None),
        (format!("{PIT1}/manifest.pit"), None),
        (format!("{PIT1}/a.seg"), None),
        (format!("{PIT1}/b.seg"), None),
        (J1.into(), None),
        (J1_INDEX.into(), None),
        (J2.into(), Some(open_len)),
    ]
}

#[test]
fn writer_reproduces_the_journal_fixture_byte_for_byte() {
    let d = fast_tmpdir();
    let open_len = write_golden(d.path());
    let files = fixture_files(open_len);
    if std::env::var_os("OFFSITE_REGEN_FIXTURES").is_some() {
        for (f, len) in &files {
            let dst = fixture_dir().join(f);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let mut bytes = fs::read(d.path().join(f)).unwrap();
            if let Some(l) = len {
                bytes.truncate(*l as usize);
            }
            fs::write(dst, bytes).unwrap();
        }
    }
    for (f, len) in &files {
        let mut fresh = fs::read(d.path().join(f)).unwrap();
        if let Some(l) = len {
            assert!(fresh[*l as usize..].iter().all(|&b| b == 0), "{f}'s tail");
            fresh.truncate(*l as usize);
        }
        let golden = fs::read(fixture_dir().join(f)).unwrap();
        assert!(fresh == golden, "{f} differs from the checked-in fixture");
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn journal_fields_sit_where_the_docs_say() {
    let j1 = fs::read(fixture_dir().join(J1)).unwrap();
    assert_eq!(&j1[0..8], b"OFSRPLOG");
    assert_eq!(le32(&j1, 8), 2, "version");
    assert_eq!(le32(&j1, 12), 0, "flags: the first file continues nothing");
    assert_eq!(&j1[16..32], &UUID);
    assert_eq!(le64(&j1, 32), 0, "after: the base");
    assert_eq!(le64(&j1, 40), 1, "file number");
    assert_eq!(le64(&j1, 48), 0, "prev_len");
    assert_eq!(le64(&j1, 56), 0, "last checkpoint before");
    assert_eq!(le64(&j1, 72), 0, "bytes before");
    assert!(j1[80..124].iter().all(|&b| b == 0));
    assert_eq!(le32(&j1, 124), crc32c::crc32c(&j1[..124]));
    // Records as in version 1: two of volume a (2 blocks), b (1 block).
    let r1 = 128;
    assert_eq!(&j1[r1..r1 + 4], b"OLRC");
    assert_eq!(j1[r1 + 4], 1, "data");
    assert_eq!(le64(&j1, r1 + 8), 1, "seq");
    assert_eq!(le32(&j1, r1 + 24), 2, "count");
    assert_eq!(le32(&j1, r1 + 28), 1024, "data length");
    let r2 = r1 + 40 + 1024 + 4;
    let c1 = r2 + 40 + 4096 + 4;
    // The first checkpoint: kind 3, crash-consistent, through seq 2.
    assert_eq!(&j1[c1..c1 + 4], b"OLRC");
    assert_eq!(j1[c1 + 4], 3, "checkpoint");
    assert_eq!(j1[c1 + 5], 2, "flags: through present, crash-consistent");
    assert_eq!(le64(&j1, c1 + 8), 1, "id");
    assert_eq!(le64(&j1, c1 + 16), T1, "time");
    assert_eq!(le32(&j1, c1 + 24), 0);
    assert_eq!(le32(&j1, c1 + 28), 0, "no name");
    assert_eq!(le64(&j1, c1 + 32), 2, "through");
    assert_eq!(le32(&j1, c1 + 40), crc32c::crc32c(&j1[c1..c1 + 40]));
    // The zero record, then the named, application-consistent one.
    let r3 = c1 + 44;
    assert_eq!(j1[r3 + 4], 2, "zeroes");
    let c2 = r3 + 44;
    assert_eq!(j1[c2 + 5], 3, "application-consistent, through present");
    assert_eq!(le32(&j1, c2 + 28), 5);
    assert_eq!(&j1[c2 + 40..c2 + 45], b"app-1");
    assert_eq!(j1.len(), c2 + 49, "the sealed file ends at its entries");

    let j2 = fs::read(fixture_dir().join(J2)).unwrap();
    assert_eq!(le64(&j2, 32), 1, "after PIT 1");
    assert_eq!(le64(&j2, 40), 2, "file number");
    assert_eq!(le32(&j2, 12), 1, "flags: continues");
    assert_eq!(le64(&j2, 48), j1.len() as u64, "prev_len: all of file 1");
    assert_eq!(le64(&j2, 56), 2, "last checkpoint before");
    assert_eq!(le64(&j2, 64), T1 + 1_000_000_000, "its time");
    assert_eq!(le64(&j2, 72), j1.len() as u64 - 128, "file 1's entries");

    let ix = fs::read(fixture_dir().join(J1_INDEX)).unwrap();
    assert_eq!(&ix[0..8], b"OFSRPJIX");
    assert_eq!(le32(&ix, 8), 1, "version");
    assert_eq!(le32(&ix, 12), 2, "checkpoints");
    assert_eq!(&ix[16..32], &UUID);
    assert_eq!(le64(&ix, 32), 1, "file number");
    assert_eq!(le64(&ix, 40), 0, "after");
    assert_eq!(le64(&ix, 48), j1.len() as u64, "end of entries");
    assert_eq!(le64(&ix, 56), 3, "write records");
    assert_eq!(le64(&ix, 64), 1, "first checkpoint's id");
    assert_eq!(le64(&ix, 80), c1 as u64, "its offset");
    assert_eq!(le64(&ix, 88), 2, "its through");
    assert_eq!(ix[96], 2, "its flags");
    let second = 64 + 36;
    assert_eq!(le64(&ix, second + 16), c2 as u64);
    assert_eq!(&ix[second + 36..second + 41], b"app-1");
    assert_eq!(ix.len(), second + 41 + 4);
    assert_eq!(le32(&ix, ix.len() - 4), crc32c::crc32c(&ix[..ix.len() - 4]));
}

/// The fixture in a temp dir, with the empty directories git drops.
fn fixture_store(from: &Path) -> tempfile::TempDir {
    let d = fast_tmpdir();
    copy_tree(from, d.path());
    for sub in ["staging", "merging", "pits"] {
        fs::create_dir_all(d.path().join(sub)).unwrap();
    }
    d
}

fn read(img: &offsite_replica_store::CheckpointImage, vol: &str, b: u64, bs: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bs];
    img.read(vol, b * bs as u64, &mut buf).unwrap();
    buf
}

#[test]
fn the_journal_fixture_opens_and_reads_back() {
    let d = fixture_store(&fixture_dir());
    let store = ReplicaStore::open(d.path()).unwrap();
    let list = store.list_checkpoints(Listing::Every).unwrap();
    assert_eq!(list.summary.count, 3);
    assert_eq!(list.summary.application_consistent, 1);
    assert_eq!(list.checkpoints[1].name.as_deref(), Some("app-1"));
    assert_eq!(list.checkpoints[2].follows, PitId::new(1));
    let img = |id| {
        store
            .checkpoint_image(CheckpointId::new(id).unwrap())
            .unwrap()
    };
    let c1 = img(1);
    assert_eq!(read(&c1, "a", 0, 512), [0xAB; 512], "the base");
    assert_eq!(read(&c1, "a", 1, 512), [0x11; 512]);
    assert_eq!(read(&c1, "a", 2, 512), [0x12; 512]);
    assert_eq!(read(&c1, "b", 3, 4096), [0x21; 4096]);
    let c2 = img(2);
    assert_eq!(read(&c2, "a", 0, 512), [0; 512], "the zero record");
    let c3 = img(3);
    assert_eq!(read(&c3, "a", 2, 512), [0x31; 512]);
    assert_eq!(read(&c3, "a", 1, 512), [0x11; 512]);
    assert_eq!(c3.starts_from(), PitId::new(1));
    drop((c1, c2, c3));
    // The open file replays into the open PIT; the log goes on.
    let mut log = store.open_log().unwrap();
    log.set_history(History::Keep);
    assert_eq!((log.records(), log.last_seq()), (1, Some(4)));
    assert_eq!(log.last_checkpoint(), CheckpointId::new(3));
    let pit = log.seal(None, CREATED.into()).unwrap();
    let mut buf = vec![0u8; 512];
    store.read(Some(pit.id), "a", 2 * 512, &mut buf).unwrap();
    assert_eq!(buf, [0x31; 512]);
}

#[test]
fn a_version_1_log_opens_and_its_writes_are_sealed() {
    let d = fixture_store(&v1_fixture_dir());
    let v1 = fs::read(d.path().join("sync.log")).unwrap();
    let store = ReplicaStore::open(d.path()).unwrap();
    assert_eq!(store.pits().len(), 1);
    let mut log = store.open_log().unwrap();
    log.set_history(History::Keep);
    assert!(!d.path().join("sync.log").exists(), "copied, then removed");
    assert_eq!((log.records(), log.last_seq()), (4, Some(13)));
    assert_eq!(log.after(), 1);
    // The records, byte for byte, after the new header.
    let j1 = fs::read(d.path().join(J1)).unwrap();
    let hl = JOURNAL_HEADER_LEN;
    assert_eq!(j1[hl..hl + v1.len() - 64], v1[64..]);
    // Checkpoints go on from there.
    log.checkpoint(T1, Consistency::Crash, None).unwrap();
    let pit = log.seal(None, CREATED.into()).unwrap();
    assert_eq!(pit.id.get(), 2);
    let block = |vol: &str, b: u64, bs: usize| {
        let mut buf = vec![0u8; bs];
        store
            .read(Some(pit.id), vol, b * bs as u64, &mut buf)
            .unwrap();
        buf
    };
    assert_eq!(block("a", 0, 512), [0; 512], "zeroes over the base");
    assert_eq!(block("a", 1, 512), [0x11; 512], "PIT 1");
    assert_eq!(block("a", 2, 512), [0x22; 512]);
    assert_eq!(block("a", 3, 512), [0x44; 512], "the later write wins");
    assert_eq!(block("b", 3, 4096), [0x33; 4096]);
    let img = store
        .checkpoint_image(CheckpointId::new(1).unwrap())
        .unwrap();
    assert_eq!(read(&img, "a", 3, 512), [0x44; 512]);
}

#[test]
fn a_version_1_log_with_a_torn_tail_keeps_its_whole_records() {
    let d = fixture_store(&v1_fixture_dir());
    let path = d.path().join("sync.log");
    let mut v1 = fs::read(&path).unwrap();
    // Half of one more record, then zeroes.
    let mut more = Vec::new();
    encode_record(
        &LogRecord {
            seq: 14,
            volume: 1,
            first: 0,
            count: 1,
            data: Some(&[0x55; 4096]),
        },
        &mut more,
    );
    v1.extend_from_slice(&more[..2000]);
    v1.extend_from_slice(&[0; 9000]);
    fs::write(&path, &v1).unwrap();
    let store = ReplicaStore::open(d.path()).unwrap();
    let log = store.open_log().unwrap();
    assert_eq!((log.records(), log.last_seq()), (4, Some(13)));
    let pit = log.finish(CREATED.into()).unwrap().unwrap();
    let mut buf = vec![0u8; 4096];
    store.read(Some(pit.id), "b", 0, &mut buf).unwrap();
    assert_eq!(buf, [0; 4096], "the torn record is not there");
}

#[test]
fn a_version_1_log_sealed_before_the_upgrade_is_removed() {
    let d = fixture_store(&v1_fixture_dir());
    let store = ReplicaStore::open(d.path()).unwrap();
    // The seal's PIT 2 committed, the log not yet replaced: PIT 2 is the
    // tip, the log still says after 1.
    let mut w = store.begin_pit().unwrap();
    w.write_block("a", 5, &[0x66; 512]).unwrap();
    w.commit(None, CREATED.into()).unwrap();
    let log = store.open_log().unwrap();
    assert_eq!((log.records(), log.after()), (0, 2));
    assert!(!d.path().join("sync.log").exists());
}
