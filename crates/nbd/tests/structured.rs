//! Structured replies, the `base:allocation` meta context with
//! `NBD_CMD_BLOCK_STATUS`, `NBD_CMD_CACHE` and `NBD_CMD_FLAG_FAST_ZERO`,
//! byte by byte through the test client.

mod common;

use std::sync::atomic::Ordering;

use common::{Client, Fixture, VOL_SIZE, start_server};
use offsite_nbd::ServerConfig;
use offsite_nbd::codec::{
    self, BASE_ALLOCATION, BlockStatusDescriptor, ChunkHeader, Command, RepError,
    allocation_flags as af, chunk_types, command_flags as cf, option_codes, reply_types,
    transmission_flags as tf,
};

const EINVAL: u32 = 22;
const ENOTSUP: u32 = 95;
const EPERM: u32 = 1;
const HOLE: u32 = af::HOLE | af::ZERO;

fn fixture() -> Fixture {
    start_server(ServerConfig::default())
}

/// One chunk as received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    Data(u64, Vec<u8>),
    Hole(u64, u32),
    Status(u32, Vec<BlockStatusDescriptor>),
    Error(u32, String),
    None,
}

fn read_chunk(c: &mut Client) -> (ChunkHeader, Chunk) {
    let raw = c.read_exact(codec::STRUCTURED_REPLY_HEADER_LEN);
    let h = codec::decode_chunk_header(&raw).expect("structured reply magic");
    let payload = c.read_exact(h.length as usize);
    let chunk = match h.chunk_type {
        chunk_types::OFFSET_DATA => Chunk::Data(
            u64::from_be_bytes(payload[..8].try_into().unwrap()),
            payload[8..].to_vec(),
        ),
        chunk_types::OFFSET_HOLE => {
            assert_eq!(payload.len(), 12);
            Chunk::Hole(
                u64::from_be_bytes(payload[..8].try_into().unwrap()),
                u32::from_be_bytes(payload[8..].try_into().unwrap()),
            )
        }
        chunk_types::BLOCK_STATUS => {
            let (id, d) = codec::decode_block_status(&payload).expect("block status");
            Chunk::Status(id, d)
        }
        chunk_types::NONE => Chunk::None,
        t if t & chunk_types::ERROR_BIT != 0 => {
            let (e, m, _) = codec::decode_error_chunk(t, &payload).expect("error chunk");
            Chunk::Error(e, m)
        }
        t => panic!("unexpected chunk type {t}"),
    };
    (h, chunk)
}

/// Every chunk of the reply to `handle`, up to the one flagged DONE.
fn read_reply_chunks(c: &mut Client, handle: u64) -> Vec<Chunk> {
    let mut out = Vec::new();
    loop {
        let (h, chunk) = read_chunk(c);
        assert_eq!(h.handle, handle);
        out.push(chunk);
        if h.flags & codec::reply_flags::DONE != 0 {
            return out;
        }
    }
}

/// Sends an option and collects `(reply type, data)` up to ACK or an error.
fn option(c: &mut Client, code: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
    c.send_option(code, data);
    let mut out = Vec::new();
    loop {
        let (h, d) = c.read_option_reply();
        assert_eq!(h.option, code);
        let last = h.reply_type == reply_types::ACK || h.reply_type & reply_types::ERROR_BIT != 0;
        out.push((h.reply_type, d));
        if last {
            return out;
        }
    }
}

fn meta_context(id: u32, name: &str) -> (u32, Vec<u8>) {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    (reply_types::META_CONTEXT, d)
}

fn ack() -> (u32, Vec<u8>) {
    (reply_types::ACK, Vec::new())
}

/// Enters transmission on `export` with structured replies and, when
/// `allocation`, `base:allocation` selected.
fn open_structured(f: &Fixture, export: &str, allocation: bool) -> (Client, u16) {
    let mut c = Client::negotiated(f.server.local_addr());
    assert_eq!(option(&mut c, option_codes::STRUCTURED_REPLY, &[]), [ack()]);
    if allocation {
        let data = codec::encode_meta_context_request(export, &[BASE_ALLOCATION]);
        assert_eq!(
            option(&mut c, option_codes::SET_META_CONTEXT, &data),
            [meta_context(1, BASE_ALLOCATION), ack()]
        );
    }
    let info = c.go(export).expect("GO");
    (c, info.flags)
}

fn read(c: &mut Client, flags: u16, offset: u64, length: u32) -> Vec<Chunk> {
    let handle = c.send_request(Command::Read, flags, offset, length);
    read_reply_chunks(c, handle)
}

fn status(c: &mut Client, flags: u16, offset: u64, length: u32) -> Vec<Chunk> {
    let handle = c.send_request(Command::BlockStatus, flags, offset, length);
    read_reply_chunks(c, handle)
}

fn d(length: u32, flags: u32) -> BlockStatusDescriptor {
    BlockStatusDescriptor { length, flags }
}

#[test]
fn flags_advertise_cache_and_fast_zero() {
    let f = fixture();
    let (_, info) = Client::open(f.server.local_addr(), "vol");
    assert_ne!(info.flags & tf::SEND_CACHE, 0);
    assert_ne!(info.flags & tf::SEND_FAST_ZERO, 0);
    assert_eq!(info.flags & tf::SEND_DF, 0);
    let (_, info) = Client::open(f.server.local_addr(), "ro");
    assert_ne!(info.flags & tf::SEND_CACHE, 0);
    // Read-only: no write-zeroes, so no fast zero either (proto.md).
    assert_eq!(info.flags & (tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO), 0);
}

#[test]
fn meta_context_negotiation_follows_proto_md() {
    let f = fixture();
    let mut c = Client::negotiated(f.server.local_addr());
    // SET before STRUCTURED_REPLY is invalid; LIST is allowed.
    let set = codec::encode_meta_context_request("vol", &[BASE_ALLOCATION]);
    let r = option(&mut c, option_codes::SET_META_CONTEXT, &set);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, RepError::Invalid.code());
    let list_all = codec::encode_meta_context_request("vol", &[]);
    assert_eq!(
        option(&mut c, option_codes::LIST_META_CONTEXT, &list_all),
        [meta_context(0, BASE_ALLOCATION), ack()]
    );
    // Structured replies with data: invalid; without: ACK.
    let r = option(&mut c, option_codes::STRUCTURED_REPLY, b"x");
    assert_eq!(r[0].0, RepError::Invalid.code());
    assert_eq!(option(&mut c, option_codes::STRUCTURED_REPLY, &[]), [ack()]);
    // "base:" is a wildcard when listing; other namespaces are ignored.
    let q = codec::encode_meta_context_request("vol", &["base:", "qemu:dirty-bitmap:x"]);
    assert_eq!(
        option(&mut c, option_codes::LIST_META_CONTEXT, &q),
        [meta_context(0, BASE_ALLOCATION), ack()]
    );
    let q = codec::encode_meta_context_request("vol", &["qemu:allocation-depth"]);
    assert_eq!(option(&mut c, option_codes::LIST_META_CONTEXT, &q), [ack()]);
    // ...but not when setting: "base:" selects nothing.
    let q = codec::encode_meta_context_request("vol", &["base:"]);
    assert_eq!(option(&mut c, option_codes::SET_META_CONTEXT, &q), [ack()]);
    // Unknown export.
    let q = codec::encode_meta_context_request("nope", &[BASE_ALLOCATION]);
    let r = option(&mut c, option_codes::SET_META_CONTEXT, &q);
    assert_eq!(r[0].0, RepError::Unknown.code());
    // Malformed data.
    let r = option(&mut c, option_codes::SET_META_CONTEXT, &[0, 0, 0, 9]);
    assert_eq!(r[0].0, RepError::Invalid.code());
    // Selected for "ro", then GO "vol": block status is refused.
    let q = codec::encode_meta_context_request("ro", &[BASE_ALLOCATION]);
    assert_eq!(
        option(&mut c, option_codes::SET_META_CONTEXT, &q),
        [meta_context(1, BASE_ALLOCATION), ack()]
    );
    c.go("vol").expect("GO");
    assert_eq!(
        status(&mut c, 0, 0, 4096),
        [Chunk::Error(EINVAL, "BlockStatus: invalid request".into())]
    );
}

#[test]
fn a_failed_set_meta_context_clears_the_selection() {
    let f = fixture();
    let mut c = Client::negotiated(f.server.local_addr());
    assert_eq!(option(&mut c, option_codes::STRUCTURED_REPLY, &[]), [ack()]);
    let q = codec::encode_meta_context_request("vol", &[BASE_ALLOCATION]);
    assert_eq!(option(&mut c, option_codes::SET_META_CONTEXT, &q).len(), 2);
    let r = option(&mut c, option_codes::SET_META_CONTEXT, b"\xff");
    assert_eq!(r[0].0, RepError::Invalid.code());
    c.go("vol").expect("GO");
    assert!(matches!(
        status(&mut c, 0, 0, 512)[..],
        [Chunk::Error(EINVAL, _)]
    ));
}

#[test]
fn structured_reads_send_data_and_holes() {
    let f = fixture();
    let (mut c, _) = open_structured(&f, "vol", false);
    {
        let mut data = f.vol.data.lock().unwrap();
        data[4096..8192].fill(0xaa);
        data[20000..20010].fill(0xbb); // inside block 4 (16384..20480)
    }
    // 0..4K hole, 4K..8K data, 8K..16K hole, 16K..20K data, 20K..24K hole.
    let chunks = read(&mut c, 0, 0, 24576);
    let mut expected_block = vec![0u8; 4096];
    expected_block[20000 - 16384..20010 - 16384].fill(0xbb);
    assert_eq!(
        chunks,
        [
            Chunk::Hole(0, 4096),
            Chunk::Data(4096, vec![0xaa; 4096]),
            Chunk::Hole(8192, 8192),
            Chunk::Data(16384, expected_block),
            Chunk::Hole(20480, 4096),
        ]
    );
    // Only the data was read from the device, and counted as sent.
    assert_eq!(f.vol.bytes_read.load(Ordering::SeqCst), 8192);
    let stats = f.server.stats().snapshot();
    assert_eq!((stats.bytes_read, stats.hole_bytes), (8192, 16384));

    // An unaligned read inside data: one data chunk.
    assert_eq!(
        read(&mut c, 0, 4100, 10),
        [Chunk::Data(4100, vec![0xaa; 10])]
    );
    // A read of nothing but hole.
    assert_eq!(read(&mut c, 0, 100_000, 5000), [Chunk::Hole(100_000, 5000)]);
    // Zero length: a NONE chunk.
    assert_eq!(read(&mut c, 0, 0, 0), [Chunk::None]);
    // Errors are error chunks, also for early validation.
    assert!(matches!(
        read(&mut c, 0, VOL_SIZE as u64, 1)[..],
        [Chunk::Error(EINVAL, _)]
    ));
    assert!(matches!(
        read(&mut c, cf::DF, 0, 1)[..],
        [Chunk::Error(EINVAL, _)]
    ));
    f.vol.fail(Some(std::io::ErrorKind::Other));
    assert!(matches!(read(&mut c, 0, 0, 512)[..], [Chunk::Error(5, _)]));
    f.vol.fail(None);
    // Writes still get simple replies; the connection is in sync.
    assert_eq!(c.write(0, b"xyz", 0), 0);
    assert_eq!(read(&mut c, 0, 0, 3), [Chunk::Data(0, b"xyz".to_vec())]);
}

#[test]
fn block_status_reports_holes_and_data() {
    let f = fixture();
    let (mut c, _) = open_structured(&f, "vol", true);
    {
        let mut data = f.vol.data.lock().unwrap();
        data[8192..8193].fill(1);
        data[65536..65536 + 3 * 4096].fill(2);
    }
    let size = VOL_SIZE as u32;
    assert_eq!(
        status(&mut c, 0, 0, size),
        [Chunk::Status(
            1,
            vec![
                d(8192, HOLE),
                d(4096, 0),
                d(65536 - 12288, HOLE),
                d(12288, 0),
                d(size - 65536 - 12288, HOLE),
            ]
        )]
    );
    // REQ_ONE: exactly one extent, not past the request's length.
    assert_eq!(
        status(&mut c, cf::REQ_ONE, 0, 100),
        [Chunk::Status(1, vec![d(100, HOLE)])]
    );
    assert_eq!(
        status(&mut c, cf::REQ_ONE | cf::FUA, 8192, (1 << 20) - 8192),
        [Chunk::Status(1, vec![d(4096, 0)])]
    );
    // Unaligned start inside data.
    assert_eq!(
        status(&mut c, 0, 8200, 10_000),
        [Chunk::Status(1, vec![d(4088, 0), d(10_000 - 4088, HOLE)])]
    );
    // Past the end, length 0 and bad flags: EINVAL.
    for (flags, offset, len) in [(0, u64::from(size), 1), (0, 0, 0), (cf::NO_HOLE, 0, 1)] {
        assert!(
            matches!(
                status(&mut c, flags, offset, len)[..],
                [Chunk::Error(EINVAL, _)]
            ),
            "{flags} {offset} {len}"
        );
    }
    // A device error is an error chunk; the connection lives on.
    f.vol.fail(Some(std::io::ErrorKind::Other));
    assert!(matches!(
        status(&mut c, 0, 0, 512)[..],
        [Chunk::Error(5, _)]
    ));
    f.vol.fail(None);
    assert_eq!(f.server.stats().snapshot().block_status, 4);
}

#[test]
fn fast_zero_is_refused_unless_the_device_can_and_cache_is_accepted() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(c.write(0, &[7; 4096], 0), 0);
    let calls = f.vol.calls.load(Ordering::SeqCst);
    // The device cannot: ENOTSUP at once, device not called, data intact.
    assert_eq!(
        c.command(Command::WriteZeroes, cf::FAST_ZERO, 0, 4096),
        ENOTSUP
    );
    assert_eq!(f.vol.calls.load(Ordering::SeqCst), calls);
    assert_eq!(c.read(0, 4096).unwrap(), vec![7; 4096]);
    // Without the flag the same zero works.
    assert_eq!(c.command(Command::WriteZeroes, 0, 0, 2048), 0);
    // The device can: done.
    f.vol.fast_zero.store(true, Ordering::SeqCst);
    assert_eq!(
        c.command(
            Command::WriteZeroes,
            cf::FAST_ZERO | cf::NO_HOLE | cf::FUA,
            2048,
            2048
        ),
        0
    );
    assert_eq!(c.read(0, 4096).unwrap(), vec![0; 4096]);
    // Read-only exports refuse it like any write.
    let (mut r, _) = Client::open(f.server.local_addr(), "ro");
    assert_eq!(r.command(Command::WriteZeroes, cf::FAST_ZERO, 0, 1), EPERM);

    // Cache: a hint the device receives; past the end is EINVAL.
    assert_eq!(c.command(Command::Cache, 0, 4096, 8192), 0);
    assert_eq!(c.command(Command::Cache, cf::FUA, 0, 0), 0);
    assert_eq!(c.command(Command::Cache, 0, VOL_SIZE as u64 - 1, 2), EINVAL);
    assert_eq!(*f.vol.cached.lock().unwrap(), [(4096, 8192)]);
    assert_eq!(f.server.stats().snapshot().caches, 2);
}
