//! `Session::into_direct`: both sides hand their TLS connection to blocking
//! threads after an answered request, and messages keep flowing in both
//! directions, in order, with keepalives answered and `Bye` seen as the end.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, Site, fast_options};
use offsite_protocol::Message;
use offsite_transport::{TransportError, connect};
use tokio::sync::mpsc;

/// The server's side of the request that precedes a handover: it answers.
async fn answer_the_request(session: &mut offsite_transport::Session) {
    let Ok(Some(Message::Request { id, .. })) = session.recv().await else {
        panic!("expected the request");
    };
    session
        .send(Message::Response {
            id,
            ok: true,
            body: Bytes::new(),
        })
        .await
        .unwrap();
}

/// The client's side: it connects, asks, has its answer and hands over.
async fn handed_over(
    server: &Server,
    site: &Site,
    options: &offsite_transport::SessionOptions,
) -> offsite_transport::DirectStream {
    let mut session = connect(&server.partner(), &site.identity, "beta", options)
        .await
        .unwrap();
    session
        .send(Message::Request {
            id: 1,
            kind: 1,
            body: Bytes::new(),
        })
        .await
        .unwrap();
    let Some(Message::Response {
        id: 1, ok: true, ..
    }) = session.recv().await.unwrap()
    else {
        panic!("expected the answer");
    };
    session.into_direct().await.unwrap()
}

/// The server answers one request, hands over, then echoes every bulk
/// frame as an ack carrying its sequence number and payload length, until
/// the client says `Bye`; it reports how many frames it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_handed_to_threads_keeps_order_and_ends_with_bye() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let server = Server::start(&alpha, &[&beta], fast_options(), move |mut session| {
        let done = done_tx.clone();
        async move {
            answer_the_request(&mut session).await;
            let stream = session.into_direct().await.unwrap();
            let seen = tokio::task::spawn_blocking(move || {
                let mut seen = 0u64;
                loop {
                    match stream.recv(Some(Duration::from_secs(10))) {
                        Ok(Some(Message::BulkData { seq, payload })) => {
                            seen += 1;
                            assert_eq!(seq, seen, "frames arrive in order");
                            assert!(payload.iter().all(|&b| b == seq as u8));
                            stream
                                .send(&Message::BulkAck {
                                    seq,
                                    bytes: payload.len() as u64,
                                })
                                .unwrap();
                        }
                        Ok(None) => return seen,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
            .await
            .unwrap();
            let _ = done.send(seen);
        }
    })
    .await;

    let stream = std::sync::Arc::new(handed_over(&server, &beta, &fast_options()).await);
    // What a late answer to one of the session's keepalives looks like to
    // the peer: its stream drops it (the server's loop fails on anything
    // but data).
    stream
        .send(&Message::Pong {
            nonce: 3,
            sent_at_micros: 0,
        })
        .unwrap();

    // One thread sends while another receives, as the sync stream does.
    const FRAMES: u64 = 200;
    let sender = {
        let stream = stream.clone();
        std::thread::spawn(move || {
            for seq in 1..=FRAMES {
                let size = if seq % 50 == 0 { 3 << 20 } else { 4096 };
                stream
                    .send(&Message::BulkData {
                        seq,
                        payload: Bytes::from(vec![seq as u8; size]),
                    })
                    .unwrap();
            }
        })
    };
    let receiver = {
        let stream = stream.clone();
        std::thread::spawn(move || {
            // A keepalive is answered by the peer's receiving thread.
            let nonce = offsite_transport::DirectStream::FIRST_NONCE + 7;
            stream
                .send(&Message::Ping {
                    nonce,
                    sent_at_micros: 0,
                })
                .unwrap();
            let mut acked = 0u64;
            let mut pong = false;
            while acked < FRAMES || !pong {
                match stream.recv(Some(Duration::from_secs(10))).unwrap() {
                    Some(Message::BulkAck { seq, bytes }) => {
                        assert_eq!(seq, acked + 1, "acks arrive in order");
                        let size = if seq % 50 == 0 { 3 << 20 } else { 4096 };
                        assert_eq!(bytes, size);
                        acked = seq;
                    }
                    // Late answers to the session's own keepalives are
                    // dropped by the stream, on both sides.
                    Some(Message::Pong { nonce: n, .. }) if n == nonce => pong = true,
                    other => panic!("unexpected {other:?}"),
                }
            }
            // Silence is reported as a dead peer after the timeout given.
            let err = stream.recv(Some(Duration::from_millis(50))).unwrap_err();
            assert!(matches!(err, TransportError::PeerDead { .. }), "{err}");
            assert!(stream.try_recv().unwrap().is_none());
        })
    };
    sender.join().unwrap();
    receiver.join().unwrap();
    stream.close();
    assert_eq!(done_rx.recv().await, Some(FRAMES));
    server.stop().await;
}

/// `send_bulk` of a self-checked payload: without its BLAKE3 hash where
/// both sides offered `SELF_CHECKED_BULK`, hashed where one did not (an
/// older peer); the receiver gets the same message either way. The first
/// batch is sent right after the answer, so it may reach the server's
/// session before it hands over: both readers accept the framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_checked_bulk_frames_are_negotiated_and_arrive_either_way() {
    for (server_offers, client_offers) in [(true, true), (false, true), (true, false)] {
        let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
        let mut server_options = fast_options();
        server_options.self_checked_bulk = server_offers;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let server = Server::start(&alpha, &[&beta], server_options, move |mut session| {
            let done = done_tx.clone();
            async move {
                answer_the_request(&mut session).await;
                let features = session.info().features;
                let stream = session.into_direct().await.unwrap();
                let got = tokio::task::spawn_blocking(move || {
                    let mut got = Vec::new();
                    while let Some(m) = stream.recv(Some(Duration::from_secs(10))).unwrap() {
                        got.push(m);
                    }
                    got
                })
                .await
                .unwrap();
                let _ = done.send((features, got));
            }
        })
        .await;
        let mut client_options = fast_options();
        client_options.self_checked_bulk = client_offers;
        let stream = handed_over(&server, &beta, &client_options).await;
        let agreed = stream.info().features;
        let sent = tokio::task::spawn_blocking(move || {
            let mut sent = Vec::new();
            for seq in 1..=3u64 {
                let mut frame = offsite_protocol::BulkFrame::default();
                let payload = vec![seq as u8; 4096 * seq as usize];
                frame.payload_buf().extend_from_slice(&payload);
                stream.send_bulk(frame, seq, true).unwrap();
                sent.push(Message::BulkData {
                    seq,
                    payload: Bytes::from(payload),
                });
            }
            stream.close();
            sent
        })
        .await
        .unwrap();
        // Bounded: a server handler that panicked (its unwraps) never
        // answers, and the test would otherwise wait for ever.
        let (server_saw, got) = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
            .await
            .expect("the server's handler finished (see its panic above if not)")
            .unwrap();
        let both = server_offers && client_offers;
        assert_eq!(agreed, server_saw);
        assert_eq!(
            agreed.contains(offsite_protocol::Features::SELF_CHECKED_BULK),
            both,
            "{server_offers} {client_offers}"
        );
        assert_eq!(got, sent);
        server.stop().await;
    }
}

/// The sync stream's round trip against the bare TCP one, on loopback in
/// this process: a `Ping` answered by the peer's receiving thread on a
/// [`DirectStream`](offsite_transport::DirectStream) (TLS, framing, CRC,
/// one TLS record each way) and one byte echoed over a plain socket, each
/// the median of 2,000 in a row, alternating in rounds. Prints the figures
/// (docs/benchmarks.md, issue 19); asserts nothing about time.
///
/// `cargo test --release -p offsite-transport --test direct round_trip -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand (see the doc)"]
async fn round_trip_of_the_stream_against_bare_tcp() {
    use std::io::{Read, Write};
    const N: usize = 2000;
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let server = Server::start(&alpha, &[&beta], fast_options(), |mut session| async move {
        answer_the_request(&mut session).await;
        let stream = session.into_direct().await.unwrap();
        // Answers pings (inside `recv`) until the client says Bye.
        tokio::task::spawn_blocking(move || {
            while let Ok(Some(_)) = stream.recv(Some(Duration::from_secs(30))) {}
        })
        .await
        .unwrap();
    })
    .await;
    let stream = handed_over(&server, &beta, &fast_options()).await;
    let (direct, tcp) = tokio::task::spawn_blocking(move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            c.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
        });
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        let (mut direct_us, mut tcp_us) = (Vec::new(), Vec::new());
        let mut nonce = offsite_transport::DirectStream::FIRST_NONCE;
        for _round in 0..4 {
            for _ in 0..N / 4 {
                nonce += 1;
                let t = std::time::Instant::now();
                stream
                    .send(&Message::Ping {
                        nonce,
                        sent_at_micros: 0,
                    })
                    .unwrap();
                match stream.recv(Some(Duration::from_secs(10))).unwrap() {
                    Some(Message::Pong { nonce: n, .. }) if n == nonce => {}
                    other => panic!("unexpected {other:?}"),
                }
                direct_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            for _ in 0..N / 4 {
                let mut b = [7u8; 1];
                let t = std::time::Instant::now();
                tcp.write_all(&b).unwrap();
                tcp.read_exact(&mut b).unwrap();
                tcp_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        stream.close();
        drop(tcp);
        echo.join().unwrap();
        (direct_us, tcp_us)
    })
    .await
    .unwrap();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let ((d50, d99), (t50, t99)) = (median(direct), median(tcp));
    println!(
        "round trip, p50 / p99 of {N}: sync stream (DirectStream ping) {d50:.1} / {d99:.1} µs, \
         bare loopback TCP {t50:.1} / {t99:.1} µs, ratio {:.2}",
        d50 / t50
    );
    server.stop().await;
}

/// The peer may send its first frames right after the answer, and even end
/// the session, before this side hands over (a slow scheduler, a short
/// stream): the handover still delivers every frame the peer sent, then
/// the end. Before, the session's reader took the peer's `Bye` as the end
/// of the session and the handover failed with "session closed" (CI hung
/// once in the test above, with the handler's unwrap panicking); and a
/// reader waiting for room in the inbound queue never saw the handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_after_the_peer_already_ended_delivers_what_it_sent() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let ended_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(ended_rx)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let server = Server::start(&alpha, &[&beta], fast_options(), move |mut session| {
        let done = done_tx.clone();
        let ended_rx = ended_rx.clone();
        async move {
            answer_the_request(&mut session).await;
            // The client sends its frames and `Bye` meanwhile, and the
            // session's reader reads them all.
            let ended = ended_rx.lock().await.take().expect("one session");
            ended.await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let got = match session.into_direct().await {
                Ok(stream) => tokio::task::spawn_blocking(move || {
                    let mut got = Vec::new();
                    while let Some(m) = stream.recv(Some(Duration::from_secs(10))).unwrap() {
                        got.push(m);
                    }
                    Ok(got)
                })
                .await
                .unwrap(),
                Err(e) => Err(e.to_string()),
            };
            let _ = done.send(got);
        }
    })
    .await;
    let stream = handed_over(&server, &beta, &fast_options()).await;
    let sent = tokio::task::spawn_blocking(move || {
        let mut sent = Vec::new();
        // More frames than the session's inbound queue holds, small ones
        // and some past the reader's pooled-frame size.
        for seq in 1..=40u64 {
            let len = if seq % 8 == 2 {
                300 << 10
            } else {
                4096 * (seq as usize % 3 + 1)
            };
            let payload = Bytes::from(vec![seq as u8; len]);
            let m = Message::BulkData { seq, payload };
            stream.send(&m).unwrap();
            sent.push(m);
        }
        stream.close();
        // Kept open until the server is done: a socket closed with unread
        // bytes (the server's keepalives) resets the connection, and a
        // reset may overtake the frames still unread at the server.
        (stream, sent)
    })
    .await
    .unwrap();
    let (_stream, sent) = sent;
    ended_tx.send(()).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
        .await
        .expect("the server's handler finished (see its panic above if not)")
        .unwrap();
    // Compared by summary: a failure would print megabytes of payload.
    let summary = |ms: Vec<Message>| -> Vec<(u64, usize, bool)> {
        ms.into_iter()
            .map(|m| match m {
                Message::BulkData { seq, payload } => {
                    (seq, payload.len(), payload.iter().all(|&b| b == seq as u8))
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };
    assert_eq!(got.map(summary), Ok(summary(sent)));
    server.stop().await;
}
