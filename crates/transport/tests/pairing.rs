//! Pairing and refusal over real TLS on loopback: who gets a session, who
//! is refused, and what each side is told.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Logs, Server, Site, eventually, fast_options};
use offsite_protocol::{Features, Message, MessageVersion, RefuseCode};
use offsite_transport::{
    Backoff, Listener, ListenerConfig, Partner, PeerName, PeerTable, Role, TransportError, connect,
    connect_with_backoff, serve_throughput_test, throughput_test,
};
use tokio::sync::mpsc;

async fn paired_server(alpha: &Site, partners: &[&Site]) -> Server {
    Server::start(alpha, partners, fast_options(), serve_throughput_test).await
}

#[tokio::test]
async fn paired_sites_open_a_session_with_rtt() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let server = Server::start(&alpha, &[&beta], fast_options(), move |session| {
        let seen = seen_tx.clone();
        async move {
            let _ = seen.send(session.info().clone());
            let _ = serve_throughput_test(session).await;
        }
    })
    .await;

    let mut session = connect(&server.partner(), &beta.identity, "beta", &fast_options())
        .await
        .unwrap();
    let info = session.info().clone();
    assert_eq!(info.peer_name.as_str(), "alpha");
    assert_eq!(&info.peer_fingerprint, alpha.identity.fingerprint());
    assert_eq!(info.version, MessageVersion::CURRENT);
    assert_eq!(
        info.features,
        Features::ZSTD.union(Features::SELF_CHECKED_BULK)
    );
    assert_eq!(info.role, Role::Connector);

    let rtt = session.measure_rtt().await.unwrap();
    assert!(
        rtt > Duration::ZERO && rtt < Duration::from_secs(2),
        "{rtt:?}"
    );
    assert!(session.rtt().is_some());

    let server_side = seen_rx.recv().await.unwrap();
    assert_eq!(server_side.peer_name.as_str(), "beta");
    assert_eq!(&server_side.peer_fingerprint, beta.identity.fingerprint());
    assert_eq!(server_side.role, Role::Listener);

    // Requests get an answer (none are defined yet), bulk data gets acks.
    session
        .send(Message::Request {
            id: 9,
            kind: 1,
            body: Bytes::from_static(b"{}"),
        })
        .await
        .unwrap();
    let Some(Message::Response {
        id: 9, ok: false, ..
    }) = session.recv().await.unwrap()
    else {
        panic!("expected a failed response");
    };
    let report = throughput_test(&mut session, 8 << 20, 256 << 10)
        .await
        .unwrap();
    assert_eq!(report.bytes, 8 << 20);
    assert!(report.mb_per_sec() > 0.0);

    session.close().await;
    assert_eq!(server.stats.sessions(), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_unpaired_client_is_refused_and_logged_once_per_minute() {
    let (logs, _guard) = Logs::capture();
    let (alpha, beta, gamma) = (Site::new("alpha"), Site::new("beta"), Site::new("gamma"));
    let server = paired_server(&alpha, &[&beta]).await;

    for _ in 0..3 {
        let err = connect(&server.partner(), &gamma.identity, "gamma", &fast_options())
            .await
            .unwrap_err();
        let TransportError::TlsRefused {
            our_fingerprint, ..
        } = &err
        else {
            panic!("expected TlsRefused, got {err:?}");
        };
        assert_eq!(our_fingerprint, gamma.identity.fingerprint());
        let text = err.to_string();
        assert!(text.contains("offsite partner add gamma"), "{text}");
        assert!(
            text.contains(gamma.identity.fingerprint().as_str()),
            "{text}"
        );
    }
    eventually("three refusals counted", || server.stats.tls_refused() == 3).await;
    let gamma_fp = gamma.identity.fingerprint().as_str();
    let refusals = logs.lines_with("is not pinned for any partner");
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(refusals[0].contains(gamma_fp) && refusals[0].contains("127.0.0.1"));
    assert_eq!(server.stats.refusals_not_logged(), 2);

    // The listener keeps serving its partners.
    let session = connect(&server.partner(), &beta.identity, "beta", &fast_options())
        .await
        .unwrap();
    session.measure_rtt().await.unwrap();
    assert_eq!(server.stats.sessions(), 1);
    server.stop().await;
}

/// A server verifier that accepts anything: the stranger below does not
/// care whom it talks to, it only needs to reach the client-certificate step.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        offsite_transport::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client that presents no certificate at all.
async fn connect_without_certificate(server: &Server) {
    let config =
        rustls::ClientConfig::builder_with_provider(offsite_transport::tls::provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnyServer))
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connected = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(server.addr.ip().into()),
            tcp,
        )
        .await;
    // TLS 1.3: the client may finish before the server's verdict arrives;
    // reading shows the refusal (an alert, or the connection closing).
    if let Ok(mut tls) = connected {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
        assert!(
            !matches!(read, Ok(Ok(n)) if n > 0),
            "a client without a certificate must not get a session"
        );
    }
}

/// Each reason for a refusal has its own rate limit: a client without a
/// certificate first, then a stranger with a self-signed certificate from
/// the same address, are both logged (the second used to be only counted).
#[tokio::test]
async fn every_refusal_reason_is_logged_even_from_one_address() {
    let (logs, _guard) = Logs::capture();
    let (alpha, beta, gamma) = (Site::new("alpha"), Site::new("beta"), Site::new("gamma"));
    let server = paired_server(&alpha, &[&beta]).await;

    connect_without_certificate(&server).await;
    eventually("the certificate-less client counted", || {
        server.stats.tls_refused() == 1
    })
    .await;
    for _ in 0..2 {
        connect(&server.partner(), &gamma.identity, "gamma", &fast_options())
            .await
            .unwrap_err();
    }
    // Garbage instead of a ClientHello: a third reason.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4))
            .await
            .unwrap();
        let _ = tcp.shutdown().await;
    }
    eventually("four refusals counted", || server.stats.tls_refused() == 4).await;
    eventually("three refusal lines", || {
        logs.lines_with("refused replication connection").len() == 3
    })
    .await;
    let lines = logs.lines_with("refused replication connection");
    let no_cert = logs.lines_with("presented no certificate");
    assert_eq!(no_cert.len(), 1, "{lines:#?}");
    let unpinned = logs.lines_with("is not pinned for any partner");
    assert_eq!(unpinned.len(), 1, "{lines:#?}");
    assert!(
        unpinned[0].contains(gamma.identity.fingerprint().as_str()),
        "{unpinned:#?}"
    );
    // Only the second stranger's attempt was rate-limited.
    assert_eq!(server.stats.refusals_not_logged(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_right_name_with_another_key_is_refused() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let impostor = Site::new("beta");
    let server = paired_server(&alpha, &[&beta]).await;
    let err = connect(
        &server.partner(),
        &impostor.identity,
        "beta",
        &fast_options(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, TransportError::TlsRefused { our_fingerprint, .. } if our_fingerprint == impostor.identity.fingerprint()),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_partner_presenting_another_certificate_is_refused_by_the_client() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let recreated_alpha = Site::new("alpha");
    let server = paired_server(&recreated_alpha, &[&beta]).await;
    // beta still has the old alpha pinned.
    let partner = alpha.partner_at(server.addr);
    let err = connect(&partner, &beta.identity, "beta", &fast_options())
        .await
        .unwrap_err();
    let TransportError::FingerprintMismatch {
        expected, offered, ..
    } = &err
    else {
        panic!("expected FingerprintMismatch, got {err:?}");
    };
    assert_eq!(expected, alpha.identity.fingerprint());
    assert_eq!(offered, recreated_alpha.identity.fingerprint());
    assert!(err.to_string().contains("offsite partner add"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn removing_a_partner_refuses_its_next_connection() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let server = paired_server(&alpha, &[&beta]).await;
    let session = connect(&server.partner(), &beta.identity, "beta", &fast_options())
        .await
        .unwrap();
    assert_eq!(server.peers.remove(&beta.peer_name()), 1);

    let err = connect(&server.partner(), &beta.identity, "beta", &fast_options())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::TlsRefused { .. }), "{err:?}");
    // The session opened before stays up until it ends.
    session.measure_rtt().await.unwrap();

    server
        .peers
        .pin(beta.peer_name(), beta.identity.fingerprint().clone());
    connect(&server.partner(), &beta.identity, "beta", &fast_options())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_version_mismatch_is_a_clear_error_on_both_sides() {
    let (logs, _guard) = Logs::capture();
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let server = paired_server(&alpha, &[&beta]).await;

    let future = fast_options().offer_versions_for_testing(3..=4);
    let err = connect(&server.partner(), &beta.identity, "beta", &future)
        .await
        .unwrap_err();
    let TransportError::VersionMismatch(mismatch) = &err else {
        panic!("expected VersionMismatch, got {err:?}");
    };
    assert_eq!(
        (mismatch.ours.clone(), mismatch.theirs.clone()),
        (3..=4, 1..=2)
    );
    assert!(
        err.to_string()
            .contains("this site speaks 3..=4, the peer speaks 1..=2"),
        "{err}"
    );
    eventually("the listener's refusal", || {
        server.stats.hello_failed() == 1
    })
    .await;
    let lines = logs.lines_with("refused replication session");
    assert_eq!(lines.len(), 1, "{}", logs.text());
    assert!(
        lines[0].contains("this site speaks 1..=2, the peer speaks 3..=4"),
        "{}",
        lines[0]
    );
    assert_eq!(
        logs.lines_with("cannot open a replication session").len(),
        1
    );

    // A newer peer that still speaks v2 negotiates down to it.
    let newer = fast_options().offer_versions_for_testing(1..=5);
    let session = connect(&server.partner(), &beta.identity, "beta", &newer)
        .await
        .unwrap();
    assert_eq!(session.info().version, MessageVersion::V2);
    session.close().await;
    // An un-upgraded v1 peer negotiates v1 with this v2 site.
    let v1 = fast_options().offer_versions_for_testing(1..=1);
    let session = connect(&server.partner(), &beta.identity, "beta", &v1)
        .await
        .unwrap();
    assert_eq!(session.info().version, MessageVersion::V1);
    server.stop().await;
}

#[tokio::test]
async fn a_name_mismatch_is_refused_naming_both_names() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let server = paired_server(&alpha, &[&beta]).await;

    // beta's certificate, but it calls itself gamma: the listener refuses.
    let err = connect(&server.partner(), &beta.identity, "gamma", &fast_options())
        .await
        .unwrap_err();
    let TransportError::RefusedByPeer { code, message, .. } = &err else {
        panic!("expected RefusedByPeer, got {err:?}");
    };
    assert_eq!(*code, RefuseCode::NameMismatch);
    assert!(
        message.contains("'beta'") && message.contains("'gamma'"),
        "{message}"
    );
    eventually("the listener's refusal", || {
        server.stats.hello_failed() == 1
    })
    .await;

    // The listener answers as alpha, but beta dials it as "alpha2".
    let mut partner = server.partner();
    partner.name = PeerName::new("alpha2").unwrap();
    let err = connect(&partner, &beta.identity, "beta", &fast_options())
        .await
        .unwrap_err();
    let TransportError::NameMismatch {
        pinned_as,
        announced,
        ..
    } = &err
    else {
        panic!("expected NameMismatch, got {err:?}");
    };
    assert_eq!(
        (pinned_as.as_str(), announced.as_str()),
        ("alpha2", "alpha")
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_partner_is_reported_and_retried_with_backoff() {
    let beta = Site::new("beta");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let partner = Partner {
        address: closed.to_string(),
        ..Site::new("alpha").partner_at(closed)
    };
    let err = connect(&partner, &beta.identity, "beta", &fast_options())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err:?}");

    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(80), 1);
    let started = tokio::time::Instant::now();
    let err = connect_with_backoff(
        &partner,
        &beta.identity,
        "beta",
        &fast_options(),
        &mut backoff,
        Some(3),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err:?}");
    // Two pauses: at least 10 ms + 20 ms (the lower halves of 20 and 40 ms).
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[tokio::test]
async fn connect_with_backoff_succeeds_once_the_partner_listens() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let partner = alpha.partner_at(port);
    let dialing = beta.clone();
    let dialer = tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(100), 2);
        let options = fast_options();
        connect_with_backoff(
            &partner,
            &dialing.identity,
            "beta",
            &options,
            &mut backoff,
            None,
        )
        .await
        .map(|session| session.info().peer_name.clone())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!dialer.is_finished());

    // The partner comes up on the port the dialer keeps trying.
    let peers = std::sync::Arc::new(PeerTable::new());
    peers.pin(beta.peer_name(), beta.identity.fingerprint().clone());
    let mut config = ListenerConfig::new("alpha", alpha.identity.clone(), peers);
    config.session = fast_options();
    let tcp = tokio::net::TcpListener::bind(port).await.unwrap();
    let server = tokio::spawn(Listener::new(config).unwrap().run(
        tcp,
        serve_throughput_test,
        std::future::pending::<()>(),
    ));
    let name = tokio::time::timeout(Duration::from_secs(10), dialer)
        .await
        .expect("the dialer connects")
        .unwrap()
        .unwrap();
    assert_eq!(name.as_str(), "alpha");
    server.abort();
}
