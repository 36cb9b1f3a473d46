//! Keepalive and dead-peer detection, both directions, against peers that
//! complete the handshake and then go silent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Server, Site, fast_options, hello_by_hand, raw_client};
use offsite_protocol::FramedReader;
use offsite_transport::{PeerTable, TransportError, connect, serve_throughput_test, tls};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::test]
async fn a_silent_client_is_declared_dead_within_dead_after() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let options = fast_options();
    let dead_after = options.dead_after;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::start(&alpha, &[&beta], options, move |mut session| {
        let tx = tx.clone();
        async move {
            let started = Instant::now();
            let result = session.recv().await;
            let _ = tx.send((result, started.elapsed()));
        }
    })
    .await;

    // Handshake, then neither read nor write (the socket stays open).
    let silent = raw_client(&beta, &server).await;
    let (result, elapsed) = tokio::time::timeout(dead_after * 5, rx.recv())
        .await
        .expect("detected well within the timeout")
        .unwrap();
    assert!(
        matches!(result, Err(TransportError::PeerDead { silent_for, .. }) if silent_for == dead_after),
        "{result:?}"
    );
    assert!(
        elapsed >= dead_after / 2,
        "declared dead after only {elapsed:?}"
    );
    drop(silent);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_server_is_declared_dead_by_the_client() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let peers = Arc::new(PeerTable::new());
    peers.pin(beta.peer_name(), beta.identity.fingerprint().clone());
    let acceptor =
        tokio_rustls::TlsAcceptor::from(tls::server_config(&alpha.identity, peers).unwrap());
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let silent_server = tokio::spawn(async move {
        let (socket, _) = tcp.accept().await.unwrap();
        let mut framed = FramedReader::new(acceptor.accept(socket).await.unwrap());
        hello_by_hand(&mut framed, "alpha").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(framed);
    });

    let options = fast_options();
    let mut session = connect(&alpha.partner_at(addr), &beta.identity, "beta", &options)
        .await
        .unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(options.dead_after * 5, session.recv())
        .await
        .expect("detected well within the timeout");
    assert!(
        matches!(result, Err(TransportError::PeerDead { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() >= options.dead_after / 2);
    // A ping to a dead peer fails too.
    assert!(session.measure_rtt().await.is_err());
    silent_server.abort();
}

#[tokio::test]
async fn an_idle_session_is_kept_alive_by_keepalives() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let server = Server::start(&alpha, &[&beta], fast_options(), serve_throughput_test).await;
    let options = fast_options();
    let mut session = connect(&server.partner(), &beta.identity, "beta", &options)
        .await
        .unwrap();
    // Idle for three times dead_after: keepalives flow both ways.
    let idle = tokio::time::timeout(options.dead_after * 3, session.recv()).await;
    assert!(
        idle.is_err(),
        "no message and no error while idle: {idle:?}"
    );
    assert!(session.rtt().is_some(), "keepalive pongs measured the RTT");
    session.measure_rtt().await.unwrap();
    session.close().await;
    server.stop().await;
}
