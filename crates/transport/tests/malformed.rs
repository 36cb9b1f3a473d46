//! Malformed input after TLS and hello, from a hand-driven peer: each bad
//! frame closes that connection with an error logged (and told to the
//! peer), while the listener keeps serving new connections.

mod common;

use bytes::{BufMut, BytesMut};
use common::{Logs, Server, Site, fast_options, raw_client};
use offsite_protocol::{
    ChecksumKind, Compression, ErrorCode, MAX_FRAME_LEN, Message, ProtocolError, encode,
};
use offsite_transport::{TransportError, connect};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// A listener whose handler reports how each session ended.
async fn reporting_server(
    alpha: &Site,
    beta: &Site,
) -> (Server, mpsc::UnboundedReceiver<TransportError>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::start(alpha, &[beta], fast_options(), move |mut session| {
        let tx = tx.clone();
        async move {
            loop {
                match session.recv().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(e);
                        break;
                    }
                }
            }
        }
    })
    .await;
    (server, rx)
}

fn frame(message: &Message) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(message, Compression::None, &mut buf).unwrap();
    buf
}

/// A frame with a correct CRC and an unknown tag.
fn unknown_tag_frame() -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32_le(12);
    buf.put_u16_le(99);
    buf.put_u16_le(0);
    buf.put_u32_le(0);
    let crc = crc32c::crc32c(&buf[4..]);
    buf.put_u32_le(crc);
    buf
}

async fn check_bad_input(bytes: &[u8], close_after: bool, expect: impl Fn(&ProtocolError) -> bool) {
    let (logs, _guard) = Logs::capture();
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let (server, mut ended) = reporting_server(&alpha, &beta).await;

    let mut raw = raw_client(&beta, &server).await;
    // A good message first: the session works until the bad bytes.
    raw.get_mut()
        .write_all(&frame(&Message::Request {
            id: 1,
            kind: 1,
            body: bytes::Bytes::from_static(b"{}"),
        }))
        .await
        .unwrap();
    raw.get_mut().write_all(bytes).await.unwrap();
    if close_after {
        raw.get_mut().shutdown().await.unwrap();
    } else {
        raw.get_mut().flush().await.unwrap();
    }

    let err = ended.recv().await.expect("the session ends with an error");
    let TransportError::Protocol { source, .. } = &err else {
        panic!("expected a protocol error, got {err:?}");
    };
    assert!(expect(source), "unexpected error: {source:?}");

    // The peer is told, then the connection is closed.
    let mut told = None;
    loop {
        match raw.read_message().await {
            Ok(Some(Message::Error { code, message })) => told = Some((code, message)),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    if !close_after {
        let (code, message) = told.expect("an Error message before the close");
        assert_eq!(code, ErrorCode::Protocol);
        assert!(message.contains("malformed frame"), "{message}");
    }
    let logged = logs.lines_with("closing session: malformed frame");
    assert_eq!(logged.len(), 1, "{}", logs.text());

    // Everyone else is still served.
    let session = connect(&server.partner(), &beta.identity, "beta", &fast_options())
        .await
        .unwrap();
    session.measure_rtt().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_truncated_frame_closes_the_connection() {
    let whole = frame(&Message::BulkAck { seq: 1, bytes: 2 });
    check_bad_input(&whole[..whole.len() - 5], true, |e| {
        matches!(e, ProtocolError::Truncated { .. })
    })
    .await;
}

#[tokio::test]
async fn an_oversized_length_prefix_closes_the_connection() {
    let mut bytes = (MAX_FRAME_LEN + 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 64]);
    check_bad_input(&bytes, false, |e| {
        matches!(e, ProtocolError::FrameTooLarge { .. })
    })
    .await;
}

#[tokio::test]
async fn a_bad_checksum_closes_the_connection() {
    let mut bad = frame(&Message::BulkAck { seq: 1, bytes: 2 });
    bad[14] ^= 0x20; // in the header
    check_bad_input(&bad, false, |e| {
        matches!(e, ProtocolError::Checksum(ChecksumKind::FrameCrc32c))
    })
    .await;
}

#[tokio::test]
async fn an_unknown_message_type_closes_the_connection() {
    check_bad_input(&unknown_tag_frame(), false, |e| {
        matches!(e, ProtocolError::UnknownTag(99))
    })
    .await;
}

#[tokio::test]
async fn a_hello_after_the_handshake_closes_the_connection() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let (server, mut ended) = reporting_server(&alpha, &beta).await;
    let mut raw = raw_client(&beta, &server).await;
    let hello = Message::Hello {
        versions: 1..=1,
        site_name: "beta".into(),
        features: offsite_protocol::Features::NONE,
    };
    raw.get_mut().write_all(&frame(&hello)).await.unwrap();
    let err = ended.recv().await.unwrap();
    assert!(
        matches!(err, TransportError::UnexpectedMessage { .. }),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn garbage_instead_of_tls_is_refused_and_counted() {
    let (alpha, beta) = (Site::new("alpha"), Site::new("beta"));
    let (server, _ended) = reporting_server(&alpha, &beta).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink).await;
    common::eventually("the refusal counted", || server.stats.tls_refused() == 1).await;
    connect(&server.partner(), &beta.identity, "beta", &fast_options())
        .await
        .unwrap();
    server.stop().await;
}
