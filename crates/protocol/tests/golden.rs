//! Golden bytes: the handshake and keepalive frames of protocol v1, the
//! bulk data frame with and without its payload hash (feature
//! `SELF_CHECKED_BULK`), pinned by checked-in fixtures
//! (`tests/fixtures/*.hex`, annotated per field). A change to these bytes
//! breaks every deployed peer; if this test fails, the change needs a new
//! `MessageVersion` or feature, not a new fixture.

use bytes::Bytes;
use bytes::BytesMut;
use offsite_protocol::{
    BulkFrame, Compression, Features, FrameDecoder, Message, PayloadHash, RefuseCode, encode,
};

/// The fixture's bytes: hex digits, whitespace ignored, `#` starts a comment.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    hex::decode(digits).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn check(name: &str, message: Message) {
    let golden = fixture(name);
    let mut encoded = BytesMut::new();
    encode(&message, Compression::None, &mut encoded).unwrap();
    assert_eq!(
        hex::encode(&encoded),
        hex::encode(&golden),
        "{name}: encoding changed"
    );
    // Compression never applies to payload-less messages.
    let mut compressed = BytesMut::new();
    encode(&message, Compression::Zstd { level: 3 }, &mut compressed).unwrap();
    assert_eq!(compressed, encoded);
    let mut buf = BytesMut::from(&golden[..]);
    assert_eq!(FrameDecoder::new().decode(&mut buf).unwrap(), Some(message));
    assert!(buf.is_empty());
}

#[test]
fn hello_v1() {
    check(
        "hello.v1.hex",
        Message::Hello {
            versions: 1..=1,
            site_name: "alpha".into(),
            features: Features::ZSTD,
        },
    );
}

#[test]
fn hello_accept_v1() {
    check(
        "hello_accept.v1.hex",
        Message::HelloAccept {
            version: 1,
            site_name: "beta".into(),
            features: Features::ZSTD,
        },
    );
}

#[test]
fn hello_refuse_v1() {
    check(
        "hello_refuse.v1.hex",
        Message::HelloRefuse {
            code: RefuseCode::VersionMismatch,
            message: "no".into(),
        },
    );
}

#[test]
fn ping_v1() {
    check(
        "ping.v1.hex",
        Message::Ping {
            nonce: 0x0102_0304_0506_0708,
            sent_at_micros: 1_000_000,
        },
    );
}

#[test]
fn hello_with_self_checked_bulk() {
    check(
        "hello_self_checked_bulk.hex",
        Message::Hello {
            versions: 1..=2,
            site_name: "alpha".into(),
            features: Features::ZSTD.union(Features::SELF_CHECKED_BULK),
        },
    );
}

fn offsite_frame(hash: PayloadHash) -> Bytes {
    let mut frame = BulkFrame::default();
    frame.payload_buf().extend_from_slice(b"offsite");
    frame.finish(0x0102_0304_0506_0708, hash).unwrap()
}

fn offsite_bulk() -> Message {
    Message::BulkData {
        seq: 0x0102_0304_0506_0708,
        payload: Bytes::from_static(b"offsite"),
    }
}

/// The hashed framing is v1's, whether encoded from a message or built in
/// place; every decoder reads it.
#[test]
fn bulk_data_v1() {
    check("bulk_data.v1.hex", offsite_bulk());
    assert_eq!(
        offsite_frame(PayloadHash::Blake3),
        Bytes::from(fixture("bulk_data.v1.hex"))
    );
}

/// Without the hash: built in place, read only by a decoder told the
/// session negotiated it.
#[test]
fn bulk_data_self_checked() {
    let golden = fixture("bulk_data_self_checked.hex");
    assert_eq!(
        hex::encode(offsite_frame(PayloadHash::Omitted)),
        hex::encode(&golden)
    );
    let mut buf = BytesMut::from(&golden[..]);
    assert!(FrameDecoder::new().decode(&mut buf).is_err());
    let mut decoder = FrameDecoder::new();
    decoder.accept_unhashed_bulk(true);
    let mut buf = BytesMut::from(&golden[..]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), Some(offsite_bulk()));
    assert!(buf.is_empty());
}
