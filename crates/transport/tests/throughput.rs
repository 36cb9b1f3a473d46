//! Bulk transfer: the throughput test, bandwidth limits, and control
//! traffic that is never stuck behind throttled bulk data.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Server, Site, fast_options};
use offsite_protocol::Message;
use offsite_transport::{TokenBucket, connect, serve_throughput_test, throughput_test};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_test_reports_a_rate() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let server = Server::start(&alpha, &[&beta], fast_options(), serve_throughput_test).await;
    for compression in [false, true] {
        let mut options = fast_options();
        options.compression = compression;
        let mut session = connect(&server.partner(), &beta.identity, "beta", &options)
            .await
            .unwrap();
        let report = throughput_test(&mut session, (32 << 20) + 12345, 1 << 20)
            .await
            .unwrap();
        assert_eq!(report.bytes, (32 << 20) + 12345);
        assert!(report.mb_per_sec() > 0.0);
        assert!(report.rtt > Duration::ZERO);
        // A second test on the same session counts from its own start.
        let again = throughput_test(&mut session, 3 << 20, 1 << 20)
            .await
            .unwrap();
        assert_eq!(again.bytes, 3 << 20);
        session.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_throttles_bulk_but_not_control() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let server = Server::start(&alpha, &[&beta], fast_options(), serve_throughput_test).await;
    let mut options = fast_options();
    options.compression = false;
    options.bandwidth = Some(Arc::new(TokenBucket::new(4 << 20, 256 << 10)));
    let mut session = connect(&server.partner(), &beta.identity, "beta", &options)
        .await
        .unwrap();

    const CHUNKS: u64 = 32; // 2 MiB of 64 KiB frames: about 0.45 s at 4 MiB/s
    let started = Instant::now();
    let sender = session.sender();
    let bulk = tokio::spawn(async move {
        for seq in 0..CHUNKS {
            let payload = Bytes::from(vec![seq as u8; 64 << 10]);
            sender
                .send(Message::BulkData { seq, payload })
                .await
                .unwrap();
        }
        Instant::now()
    });
    // While bulk is throttled, a ping (control) goes out at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pinger = session.sender();
    let ping = tokio::spawn(async move {
        pinger.measure_rtt().await.unwrap();
        Instant::now()
    });
    let mut acked = 0;
    while acked < CHUNKS {
        match session.recv().await.unwrap() {
            Some(Message::BulkAck { .. }) => acked += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let bulk_done = bulk.await.unwrap();
    let ping_done = ping.await.unwrap();
    // Lower bound only: (2 MiB - 256 KiB burst) / 4 MiB/s = 0.44 s.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(
        ping_done < bulk_done,
        "the ping waited for throttled bulk data"
    );
    session.close().await;
    server.stop().await;
}

/// Loopback benchmark, side by side with iperf3 (if installed):
/// `cargo test --release -p offsite-transport --test throughput -- --ignored --nocapture`.
/// Alternates iperf3 (single stream, 3 s) and a 1 GiB `throughput_test`
/// (1 MiB chunks, compression off) three times and prints each ratio, so
/// that load from other work on the machine hits both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 3 x 1 GiB over loopback"]
async fn loopback_throughput_1gib() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let mut options = fast_options();
    options.compression = false;
    options.dead_after = Duration::from_secs(30);
    let server = Server::start(&alpha, &[&beta], options.clone(), serve_throughput_test).await;
    let mut session = connect(&server.partner(), &beta.identity, "beta", &options)
        .await
        .unwrap();
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let iperf = tokio::task::spawn_blocking(iperf3_loopback_mb_per_sec)
            .await
            .unwrap();
        let report = throughput_test(&mut session, 1 << 30, 1 << 20)
            .await
            .unwrap();
        let ours = report.mb_per_sec();
        match iperf {
            Some(iperf) => {
                ratios.push(ours / iperf);
                println!(
                    "round {round}: throughput_test {ours:.0} MB/s, iperf3 {iperf:.0} MB/s, ratio {:.2}, rtt {:?}",
                    ours / iperf,
                    report.rtt
                );
            }
            None => println!(
                "round {round}: throughput_test {ours:.0} MB/s (iperf3 not installed), rtt {:?}",
                report.rtt
            ),
        }
    }
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!("median ratio to iperf3: {:.2}", ratios[ratios.len() / 2]);
    }
    session.close().await;
    server.stop().await;
}

/// iperf3 single-stream loopback throughput (receiver side), MB/s.
fn iperf3_loopback_mb_per_sec() -> Option<f64> {
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port()
        .to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port, "-t", "3", "-f", "m"])
        .output()
        .ok()?;
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "Mbits/sec")?;
    let mbits: f64 = words.get(at.checked_sub(1)?)?.parse().ok()?;
    Some(mbits / 8.0)
}
