//! The fault proxy against a plain std TCP echo server.
//!
//! Timing checks are lower bounds only: a loaded machine may make things
//! slower, never faster.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use offsite_testkit::proxy::{Direction, FaultProxy};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Generous bound so a broken proxy fails a test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Echoes every connection until EOF, one thread per connection.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().expect("echo server addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).expect("connect to proxy");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Sends `data` from another thread, half-closes, and returns everything
/// echoed back until EOF.
fn echo_all(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut writer = stream.try_clone().expect("clone stream");
    let sent = data.to_vec();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).expect("send through proxy");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut echoed = Vec::with_capacity(data.len());
    let mut reader = stream;
    reader.read_to_end(&mut echoed).expect("read echo");
    sender.join().expect("sender thread");
    echoed
}

/// One small message there and back; returns once the proxy is forwarding.
fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("send");
    let mut back = vec![0; msg.len()];
    stream.read_exact(&mut back).expect("receive echo");
    assert_eq!(back, msg);
}

fn differing_positions(sent: &[u8], echoed: &[u8]) -> Vec<usize> {
    assert_eq!(
        sent.len(),
        echoed.len(),
        "corruption must not change length"
    );
    sent.iter()
        .zip(echoed)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect()
}

/// A read that fails or hits EOF (not a timeout) means the proxy closed us.
fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected a closed connection, read {n} bytes"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "expected a closed connection, timed out: {e}"
        ),
    }
}

#[test]
fn passes_ten_mib_through_intact() {
    let proxy = FaultProxy::start(echo_server());
    let data = pattern(10 << 20, 1);
    let echoed = echo_all(connect(&proxy), &data);
    assert!(echoed == data, "10 MiB came back altered");
    let stats = proxy.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.client_to_server.bytes_forwarded, 10 << 20);
    assert_eq!(stats.server_to_client.bytes_forwarded, 10 << 20);
    assert_eq!(stats.client_to_server.bytes_corrupted, 0);
    proxy.stop();
}

#[test]
fn latency_delays_each_direction() {
    let proxy = FaultProxy::start(echo_server());
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"warm");

    let faults = proxy.faults();
    faults.set_latency(Direction::ClientToServer, Duration::from_millis(150));
    let start = Instant::now();
    round_trip(&mut stream, b"one way");
    assert!(start.elapsed() >= Duration::from_millis(150));

    faults.set_latency(Direction::ServerToClient, Duration::from_millis(150));
    let start = Instant::now();
    round_trip(&mut stream, b"both ways");
    assert!(start.elapsed() >= Duration::from_millis(300));

    // A delay line, not a stop-and-wait: bulk data still arrives intact.
    let data = pattern(1 << 20, 2);
    assert!(echo_all(stream, &data) == data);
}

#[test]
fn bandwidth_cap_paces_transfers() {
    let proxy = FaultProxy::start(echo_server());
    proxy
        .faults()
        .set_bandwidth(Direction::ClientToServer, Some(1 << 20));
    let data = pattern(2 << 20, 3);
    let start = Instant::now();
    let echoed = echo_all(connect(&proxy), &data);
    let elapsed = start.elapsed();
    assert!(echoed == data);
    assert!(
        elapsed >= Duration::from_millis(1500),
        "2 MiB at 1 MiB/s took only {elapsed:?}"
    );
}

#[test]
fn stall_holds_data_until_unstall() {
    let proxy = FaultProxy::start(echo_server());
    let faults = proxy.faults();
    for (i, dir) in Direction::ALL.into_iter().enumerate() {
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"before stall");
        faults.stall(dir);
        let data = pattern(100 * 1024, 10 + i as u64);
        stream.write_all(&data).expect("send while stalled");

        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0; 1024];
        let err = stream
            .read(&mut buf)
            .expect_err("nothing may arrive during a stall");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{dir:?}: stalled read failed with {err}"
        );

        faults.unstall(dir);
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut back = vec![0; data.len()];
        stream.read_exact(&mut back).expect("read after unstall");
        assert!(back == data, "{dir:?}: data altered by stall");
        stream.shutdown(Shutdown::Write).unwrap();
        assert_closed(&mut stream);
    }
}

#[test]
fn reset_all_aborts_open_connections() {
    let proxy = FaultProxy::start(echo_server());
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"hello");

    proxy.faults().reset_all();
    let err = stream
        .read(&mut [0; 16])
        .expect_err("a reset connection must fail, not end cleanly");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(proxy.stats().resets, 1);

    // The link itself is fine: new connections work.
    let mut again = connect(&proxy);
    round_trip(&mut again, b"hello again");
    assert_eq!(proxy.stats().resets, 1);
}

#[test]
fn refuse_new_closes_new_connections() {
    let proxy = FaultProxy::start(echo_server());
    let faults = proxy.faults();
    let mut open = connect(&proxy);
    round_trip(&mut open, b"established");

    faults.refuse_new(true);
    let mut refused = connect(&proxy);
    assert_closed(&mut refused);
    assert_eq!(proxy.stats().connections_refused, 1);
    round_trip(&mut open, b"still up");

    faults.refuse_new(false);
    let mut accepted = connect(&proxy);
    round_trip(&mut accepted, b"link back");
    assert_eq!(proxy.stats().connections_accepted, 2);
}

#[test]
fn corrupt_at_flips_exactly_one_byte_once() {
    let proxy = FaultProxy::start(echo_server());
    let faults = proxy.faults();
    let data = pattern(256 * 1024, 4);

    faults.corrupt_at(Direction::ClientToServer, 123_457, 0x5A);
    let echoed = echo_all(connect(&proxy), &data);
    assert_eq!(differing_positions(&data, &echoed), [123_457]);
    assert_eq!(echoed[123_457], data[123_457] ^ 0x5A);

    // One-shot: the next connection is clean.
    let echoed = echo_all(connect(&proxy), &data);
    assert!(echoed == data);

    faults.corrupt_at(Direction::ServerToClient, 0, 0x80);
    let echoed = echo_all(connect(&proxy), &data);
    assert_eq!(differing_positions(&data, &echoed), [0]);

    let stats = proxy.stats();
    assert_eq!(stats.client_to_server.bytes_corrupted, 1);
    assert_eq!(stats.server_to_client.bytes_corrupted, 1);
}

#[test]
fn corrupt_random_replays_with_the_same_seed() {
    let proxy = FaultProxy::start(echo_server());
    let faults = proxy.faults();
    let data = pattern(512 * 1024, 5);
    let run = |seed| {
        faults.corrupt_random(Direction::ClientToServer, 1e-3, seed);
        let echoed = echo_all(connect(&proxy), &data);
        differing_positions(&data, &echoed)
    };

    let first = run(42);
    let second = run(42);
    let other = run(43);
    assert!(!first.is_empty(), "p = 1e-3 over 512 KiB corrupted nothing");
    assert_eq!(first, second, "same seed, different positions");
    assert_ne!(first, other, "different seeds, same positions");

    let corrupted = (first.len() + second.len() + other.len()) as u64;
    assert_eq!(proxy.stats().client_to_server.bytes_corrupted, corrupted);
}

#[test]
fn stop_closes_connections() {
    let proxy = FaultProxy::start(echo_server());
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"before stop");
    proxy.stop();
    assert_closed(&mut stream);
}
