//! Server behaviour over real loopback sockets, driven by the hand-written
//! client in `common`.

mod common;

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, Fixture, VOL_SIZE, start_server};
use offsite_nbd::ServerConfig;
use offsite_nbd::codec::{
    self, Command, NbdErrno, RepError, client_flags, command_flags as cf, option_codes,
    reply_types, transmission_flags as tf,
};

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EPERM: u32 = 1;
const EIO: u32 = 5;

fn fixture() -> Fixture {
    start_server(ServerConfig::default())
}

#[test]
fn go_reports_export_info_and_flags() {
    let f = fixture();
    let (_client, info) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(info.size, VOL_SIZE as u64);
    for flag in [
        tf::HAS_FLAGS,
        tf::SEND_FLUSH,
        tf::SEND_FUA,
        tf::SEND_TRIM,
        tf::SEND_WRITE_ZEROES,
        tf::CAN_MULTI_CONN,
    ] {
        assert_ne!(info.flags & flag, 0, "flag {flag:#x} missing");
    }
    assert_eq!(info.flags & tf::READ_ONLY, 0);
    assert_eq!(info.flags & tf::SEND_DF, 0, "DF needs structured replies");
    assert_eq!(info.name.as_deref(), Some("vol"));
    assert_eq!(info.description.as_deref(), Some("test volume"));
    assert_eq!(info.block_size, Some((1, 4096, 32 << 20)));
}

#[test]
fn write_then_read_back() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(c.write(4096, &data, 0), 0);
    assert_eq!(c.write(100, b"unaligned", cf::FUA), 0);
    assert_eq!(c.read(4096, 8192).unwrap(), data);
    assert_eq!(c.read(100, 9).unwrap(), b"unaligned");
    assert_eq!(f.vol.fua_writes.load(Ordering::SeqCst), 1);
    assert_eq!(c.command(Command::Flush, 0, 0, 0), 0);
    assert_eq!(f.vol.flushes.load(Ordering::SeqCst), 1);

    let stats = f.server.stats().snapshot();
    assert_eq!(stats.writes, 2);
    assert_eq!(stats.reads, 2);
    assert_eq!(stats.flushes, 1);
    assert_eq!(stats.bytes_written, 8192 + 9);
    assert_eq!(stats.bytes_read, 8192 + 9);
    assert_eq!(stats.errors, 0);
}

/// Writes that arrive together are announced to the device as a burst
/// (`more_writes` on all but the last; never on FUA), so a replicated
/// device can send them as one batch, and the device is told to release
/// what it holds before the server waits for more requests.
#[test]
fn a_burst_of_writes_is_announced_to_the_device() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    let mut burst = Vec::new();
    let request = |command, flags, offset, length, handle| {
        codec::Request {
            flags,
            command,
            handle,
            offset,
            length,
        }
        .encode()
    };
    for (i, flags) in [0, 0, cf::FUA, 0, 0].into_iter().enumerate() {
        burst.extend_from_slice(&request(
            Command::Write,
            flags,
            512 * i as u64,
            512,
            i as u64,
        ));
        burst.extend_from_slice(&[i as u8 + 1; 512]);
    }
    burst.extend_from_slice(&request(Command::Read, 0, 0, 512, 99));
    c.send_raw(&burst);
    for _ in 0..5 {
        assert_eq!(c.read_reply().error, 0);
    }
    let reply = c.read_reply();
    assert_eq!((reply.handle, reply.error), (99, 0));
    assert_eq!(c.read_exact(512), vec![1; 512]);
    let hints = f.vol.hints.lock().unwrap().clone();
    assert_eq!(
        hints,
        ["write+", "write+", "write", "write+", "write", "release"],
        "the FUA write and the one before the read end a burst"
    );
    assert_eq!(c.read(2048, 512).unwrap(), vec![5; 512]);
}

#[test]
fn trim_and_write_zeroes_zero_the_range() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(c.write(0, &[0xaa; 4096], 0), 0);
    assert_eq!(c.command(Command::Trim, 0, 0, 1024), 0);
    assert_eq!(
        c.command(Command::WriteZeroes, cf::NO_HOLE | cf::FUA, 2048, 1024),
        0
    );
    let back = c.read(0, 4096).unwrap();
    assert!(back[..1024].iter().all(|&b| b == 0));
    assert!(back[1024..2048].iter().all(|&b| b == 0xaa));
    assert!(back[2048..3072].iter().all(|&b| b == 0));
    assert!(back[3072..].iter().all(|&b| b == 0xaa));
    let stats = f.server.stats().snapshot();
    assert_eq!((stats.trims, stats.write_zeroes), (1, 1));
}

#[test]
fn out_of_range_requests_follow_proto_md() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    let end = VOL_SIZE as u64;
    assert_eq!(c.read(end - 10, 11), Err(EINVAL));
    assert_eq!(c.read(end, 1), Err(EINVAL));
    assert_eq!(
        c.read(u64::MAX, 1),
        Err(EINVAL),
        "offset + length overflows"
    );
    assert_eq!(c.write(end - 1, &[1, 2], 0), ENOSPC);
    assert_eq!(c.command(Command::Trim, 0, end, 512), EINVAL);
    assert_eq!(c.command(Command::WriteZeroes, 0, end - 1, 2), ENOSPC);
    // Exactly up to the end is fine.
    assert_eq!(c.read(end - 10, 10).unwrap(), vec![0; 10]);
    assert_eq!(f.server.stats().snapshot().errors, 6);
}

#[test]
fn zero_length_requests_succeed_without_device_calls() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(c.read(0, 0).unwrap(), Vec::<u8>::new());
    assert_eq!(c.write(10, &[], 0), 0);
    assert_eq!(c.command(Command::Trim, 0, 0, 0), 0);
    assert_eq!(c.command(Command::WriteZeroes, 0, VOL_SIZE as u64, 0), 0);
    assert_eq!(f.vol.calls.load(Ordering::SeqCst), 0);
    // Still bounds-checked: an empty range starting past the end is invalid.
    assert_eq!(c.read(VOL_SIZE as u64 + 1, 0), Err(EINVAL));
}

#[test]
fn over_limit_lengths_are_einval_and_connection_survives() {
    let config = ServerConfig {
        max_request_bytes: 64 << 10,
        ..ServerConfig::default()
    };
    let f = start_server(config);
    let (mut c, info) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(info.block_size, Some((1, 4096, 64 << 10)));
    assert_eq!(c.read(0, (64 << 10) + 1), Err(EINVAL));
    assert_eq!(
        c.command(Command::WriteZeroes, 0, 0, (64 << 10) + 1),
        EINVAL
    );
    // TRIM is not bound by the maximum block size.
    assert_eq!(c.command(Command::Trim, 0, 0, 128 << 10), 0);
    // An over-limit write below 32 MiB: payload skipped, stream stays in sync.
    let big = vec![0x5a; 128 << 10];
    assert_eq!(c.write(0, &big, 0), EINVAL);
    assert_eq!(c.write(0, b"still here", 0), 0);
    assert_eq!(c.read(0, 10).unwrap(), b"still here");
}

#[test]
fn write_beyond_32_mib_gets_einval_then_close() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    let handle = c.send_request(Command::Write, 0, 0, 64 << 20);
    // No payload sent: the server must not wait for 64 MiB it won't accept.
    let reply = c.read_reply();
    assert_eq!((reply.handle, reply.error), (handle, EINVAL));
    assert!(c.is_closed());
    // The server is fine.
    let (mut other, _) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(other.read(0, 4).unwrap(), vec![0; 4]);
}

#[test]
fn unknown_export_then_same_server_serves_another_client() {
    let f = fixture();
    let mut c = Client::negotiated(f.server.local_addr());
    assert_eq!(c.go("nope"), Err(RepError::Unknown.code()));
    assert_eq!(
        c.info_or_go(option_codes::INFO, "nope"),
        Err(RepError::Unknown.code())
    );
    // Same connection may go on haggling and pick a real export.
    let info = c.go("vol").expect("go after error");
    assert_eq!(info.size, VOL_SIZE as u64);
    assert_eq!(c.read(0, 1).unwrap(), vec![0]);
    // And another client is served too.
    let (mut other, _) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(other.write(0, b"x", 0), 0);
}

#[test]
fn read_only_export_refuses_modifications_with_eperm() {
    let f = fixture();
    let (mut c, info) = Client::open(f.server.local_addr(), "ro");
    assert_ne!(info.flags & tf::READ_ONLY, 0);
    assert_eq!(info.flags & (tf::SEND_TRIM | tf::SEND_WRITE_ZEROES), 0);
    // The payload is consumed: the next request parses fine.
    assert_eq!(c.write(0, &[7; 4096], 0), EPERM);
    assert_eq!(c.command(Command::Trim, 0, 0, 512), EPERM);
    assert_eq!(c.command(Command::WriteZeroes, 0, 0, 512), EPERM);
    assert_eq!(c.read(0, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(c.command(Command::Flush, 0, 0, 0), 0);
}

#[test]
fn bad_magic_closes_only_that_connection() {
    let f = fixture();
    let (mut good, _) = Client::open(f.server.local_addr(), "vol");
    let (mut bad, _) = Client::open(f.server.local_addr(), "vol");
    bad.stream
        .write_all(&[0xde; codec::REQUEST_HEADER_LEN])
        .unwrap();
    assert!(bad.is_closed());
    assert_eq!(good.write(0, b"ok", 0), 0);
    assert_eq!(good.read(0, 2).unwrap(), b"ok");

    // Bad magic during option haggling closes too.
    let mut bad = Client::negotiated(f.server.local_addr());
    bad.stream
        .write_all(&[0u8; codec::OPTION_HEADER_LEN])
        .unwrap();
    assert!(bad.is_closed());
    assert_eq!(good.read(0, 2).unwrap(), b"ok");
}

#[test]
fn invalid_commands_and_flags_are_einval() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(c.command(Command::Other(42), 0, 0, 0), EINVAL);
    // Block status needs a meta context (and so structured replies).
    assert_eq!(c.command(Command::BlockStatus, 0, 0, 512), EINVAL);
    assert_eq!(c.command(Command::Cache, cf::NO_HOLE, 0, 512), EINVAL);
    assert_eq!(c.command(Command::Read, cf::DF, 0, 512), EINVAL);
    assert_eq!(c.command(Command::Trim, cf::NO_HOLE, 0, 512), EINVAL);
    assert_eq!(c.command(Command::Read, cf::REQ_ONE, 0, 512), EINVAL);
    assert_eq!(c.command(Command::Flush, 0x8000, 0, 0), EINVAL);
    // A write with bad flags still has its payload skipped.
    let handle = c.send_request(Command::Write, cf::NO_HOLE, 0, 3);
    c.stream.write_all(b"abc").unwrap();
    let reply = c.read_reply();
    assert_eq!((reply.handle, reply.error), (handle, EINVAL));
    // FUA is accepted on every command.
    assert_eq!(c.read(0, 3).unwrap(), vec![0; 3]);
    assert_eq!(c.command(Command::Flush, cf::FUA, 0, 0), 0);
}

#[test]
fn device_errors_map_by_kind_and_connection_survives() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    let cases = [
        (io::ErrorKind::StorageFull, ENOSPC),
        (io::ErrorKind::QuotaExceeded, ENOSPC),
        (io::ErrorKind::PermissionDenied, EPERM),
        (io::ErrorKind::InvalidInput, EINVAL),
        (io::ErrorKind::Other, EIO),
    ];
    for (kind, errno) in cases {
        f.vol.fail(Some(kind));
        assert_eq!(c.write(0, b"data", 0), errno, "{kind:?}");
        // A failed read sends no payload.
        assert_eq!(c.read(0, 16), Err(errno), "{kind:?}");
        assert_eq!(c.command(Command::Flush, 0, 0, 0), errno, "{kind:?}");
    }
    f.vol.fail(None);
    assert_eq!(c.read(0, 4).unwrap(), vec![0; 4]);
    assert_eq!(NbdErrno::Io.code(), EIO);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    // Queue 32 writes and 32 reads before reading any reply.
    let mut batch = Vec::new();
    for i in 0..32u64 {
        let req = codec::Request {
            flags: 0,
            command: Command::Write,
            handle: i,
            offset: i * 512,
            length: 512,
        };
        batch.extend_from_slice(&req.encode());
        batch.extend_from_slice(&[i as u8; 512]);
    }
    for i in 0..32u64 {
        let req = codec::Request {
            flags: 0,
            command: Command::Read,
            handle: 100 + i,
            offset: i * 512,
            length: 512,
        };
        batch.extend_from_slice(&req.encode());
    }
    c.stream.write_all(&batch).unwrap();
    for i in 0..32u64 {
        let reply = c.read_reply();
        assert_eq!((reply.handle, reply.error), (i, 0));
    }
    for i in 0..32u64 {
        let reply = c.read_reply();
        assert_eq!((reply.handle, reply.error), (100 + i, 0));
        assert_eq!(c.read_exact(512), vec![i as u8; 512]);
    }
}

#[test]
fn writes_are_visible_across_connections() {
    let f = fixture();
    let addr = f.server.local_addr();
    let (mut a, info) = Client::open(addr, "vol");
    assert_ne!(info.flags & tf::CAN_MULTI_CONN, 0);
    let (mut b, _) = Client::open(addr, "vol");
    assert_eq!(a.write(8192, b"shared", 0), 0);
    assert_eq!(b.command(Command::Flush, 0, 0, 0), 0);
    assert_eq!(b.read(8192, 6).unwrap(), b"shared");
    assert_eq!(f.server.connections_for("vol"), 2);
    assert_eq!(f.server.connections_for("ro"), 0);
    drop(a);
    wait_until(|| f.server.connections_for("vol") == 1);
}

#[test]
fn option_haggling_edge_cases() {
    let f = fixture();
    let mut c = Client::negotiated(f.server.local_addr());

    // Extended headers are deliberately not negotiated.
    c.send_option(option_codes::EXTENDED_HEADERS, &[]);
    let (h, _) = c.read_option_reply();
    assert_eq!(h.reply_type, RepError::Unsup.code());
    // Neither is anything unknown.
    c.send_option(0x1234, b"whatever");
    let (h, _) = c.read_option_reply();
    assert_eq!(h.reply_type, RepError::Unsup.code());
    assert_eq!(h.option, 0x1234);
    // LIST with data is invalid; without, it lists every export then ACKs.
    c.send_option(option_codes::LIST, b"x");
    let (h, _) = c.read_option_reply();
    assert_eq!(h.reply_type, RepError::Invalid.code());
    c.send_option(option_codes::LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (h, data) = c.read_option_reply();
        if h.reply_type == reply_types::ACK {
            break;
        }
        assert_eq!(h.reply_type, reply_types::SERVER);
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(data[4..4 + len].to_vec()).unwrap());
    }
    assert_eq!(names, ["ro", "vol"]);
    // Malformed GO data is answered, not fatal.
    c.send_option(option_codes::GO, &[0, 0, 0, 9, b'a']);
    let (h, _) = c.read_option_reply();
    assert_eq!(h.reply_type, RepError::Invalid.code());
    // INFO then GO.
    let info = c.info_or_go(option_codes::INFO, "ro").unwrap();
    assert_eq!(info.size, 64 << 10);
    let go = c.go("ro").unwrap();
    assert_eq!(info, go);
    assert_eq!(f.server.connections_for("ro"), 1);
}

#[test]
fn abort_is_acknowledged_then_closed() {
    let f = fixture();
    let mut c = Client::negotiated(f.server.local_addr());
    c.send_option(option_codes::ABORT, &[]);
    let (h, _) = c.read_option_reply();
    assert_eq!(h.reply_type, reply_types::ACK);
    assert!(c.is_closed());
}

#[test]
fn export_name_enters_transmission_with_or_without_zeroes() {
    let f = fixture();
    for (flags, expected_len) in [
        (client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES, 10),
        (
            client_flags::FIXED_NEWSTYLE,
            10 + codec::EXPORT_NAME_PADDING,
        ),
        (0, 10 + codec::EXPORT_NAME_PADDING),
    ] {
        let mut c = Client::connect(f.server.local_addr());
        c.handshake(flags);
        c.send_option(option_codes::EXPORT_NAME, b"vol");
        let reply = c.read_exact(expected_len);
        assert_eq!(
            u64::from_be_bytes(reply[..8].try_into().unwrap()),
            VOL_SIZE as u64
        );
        assert!(reply[10..].iter().all(|&b| b == 0));
        assert_eq!(c.write(0, b"old style", 0), 0);
        assert_eq!(c.read(0, 9).unwrap(), b"old style");
    }
    // An unknown name cannot be answered with an error: the server closes.
    let mut c = Client::negotiated(f.server.local_addr());
    c.send_option(option_codes::EXPORT_NAME, b"nope");
    assert!(c.is_closed());
}

#[test]
fn protocol_violations_in_handshake_close_the_connection() {
    let f = fixture();
    // Unknown client flag.
    let mut c = Client::connect(f.server.local_addr());
    c.handshake(client_flags::FIXED_NEWSTYLE | 0x100);
    assert!(c.is_closed());
    // Option data over the 64 KiB bound.
    let mut c = Client::negotiated(f.server.local_addr());
    let mut header = Vec::new();
    header.extend_from_slice(&codec::IHAVEOPT.to_be_bytes());
    header.extend_from_slice(&option_codes::GO.to_be_bytes());
    header.extend_from_slice(&(1u32 << 20).to_be_bytes());
    c.stream.write_all(&header).unwrap();
    assert!(c.is_closed());
    // The server still works.
    let (mut ok, _) = Client::open(f.server.local_addr(), "vol");
    assert_eq!(ok.read(0, 1).unwrap(), vec![0]);
}

#[test]
fn disc_closes_the_connection() {
    let f = fixture();
    let (mut c, _) = Client::open(f.server.local_addr(), "vol");
    c.send_request(Command::Disc, 0, 0, 0);
    assert!(c.is_closed());
    wait_until(|| f.server.stats().snapshot().connections_active == 0);
}

#[test]
fn connection_limit_closes_excess_connections() {
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let f = start_server(config);
    let addr = f.server.local_addr();
    let (mut a, _) = Client::open(addr, "vol");
    let (_b, _) = Client::open(addr, "vol");
    let mut refused = Client::connect(addr);
    assert!(
        refused.is_closed(),
        "third connection must be closed without a greeting"
    );
    let stats = f.server.stats().snapshot();
    assert_eq!(stats.refused_connections, 1);
    assert_eq!(stats.connections_active, 2);
    assert_eq!(a.read(0, 1).unwrap(), vec![0]);
    // Freeing a slot lets a new client in.
    drop(a);
    wait_until(|| f.server.stats().snapshot().connections_active == 1);
    let (mut c, _) = Client::open(addr, "vol");
    assert_eq!(c.read(0, 1).unwrap(), vec![0]);
}

#[test]
fn shutdown_with_idle_clients_returns_promptly() {
    let f = fixture();
    let addr = f.server.local_addr();
    // One idle in transmission, one idle mid-handshake, one never spoke.
    let (mut idle, _) = Client::open(addr, "vol");
    let mut haggling = Client::negotiated(addr);
    let silent = TcpStream::connect(addr).unwrap();
    wait_until(|| f.server.stats().snapshot().connections_active == 3);

    let started = Instant::now();
    f.server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(idle.is_closed());
    assert!(haggling.is_closed());
    drop(silent);
    // No longer accepting.
    assert!(
        TcpStream::connect(addr).is_err() || {
            let mut late = Client::connect(addr);
            late.is_closed()
        }
    );
}

#[test]
fn shutdown_finishes_the_request_in_flight() {
    let f = fixture();
    let addr = f.server.local_addr();
    let (mut c, _) = Client::open(addr, "vol");
    *f.vol.write_delay.lock().unwrap() = Duration::from_millis(300);
    let handle = c.send_request(Command::Write, 0, 0, 4);
    c.stream.write_all(b"last").unwrap();
    // Let the server start executing the (300 ms) write, then shut down
    // under it.
    thread::sleep(Duration::from_millis(100));
    let vol = Arc::clone(&f.vol);
    f.server.shutdown();
    let reply = c.read_reply();
    assert_eq!((reply.handle, reply.error), (handle, 0));
    assert!(c.is_closed());
    assert_eq!(&vol.data.lock().unwrap()[..4], b"last");
}

#[test]
fn dropping_the_server_shuts_it_down() {
    let f = fixture();
    let addr = f.server.local_addr();
    let (mut c, _) = Client::open(addr, "vol");
    drop(f);
    assert!(c.is_closed());
}

#[test]
fn invalid_config_is_rejected() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = Arc::new(common::MemRegistry::default());
    let config = ServerConfig {
        preferred_block_size: 1000,
        ..ServerConfig::default()
    };
    let err = offsite_nbd::NbdServer::start(listener, registry, config).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn handshake_timeout_closes_silent_clients() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let f = start_server(config);
    let addr = f.server.local_addr();
    let started = Instant::now();
    let mut silent = Client::connect(addr);
    let _greeting = silent.read_exact(codec::GREETING_LEN);
    assert!(silent.is_closed());
    assert!(started.elapsed() < Duration::from_secs(5));
    // Once in transmission the timeout no longer applies.
    let (mut c, _) = Client::open(addr, "vol");
    thread::sleep(Duration::from_millis(400));
    assert_eq!(c.read(0, 1).unwrap(), vec![0]);
}
