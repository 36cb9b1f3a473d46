//! The hello exchange right after TLS, the same on both sides: send our
//! `Hello`, read theirs, decide (version, name, features), send the verdict
//! (`HelloAccept` or `HelloRefuse`), read theirs. Both sides decide from
//! the same two hellos, so they agree without another round trip, and each
//! can explain a refusal in full.

use std::io;
use std::ops::RangeInclusive;

use offsite_protocol::{
    Compression, Features, FramedReader, Message, MessageVersion, RefuseCode, StreamError,
    VersionMismatch, negotiate, write_message,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::TransportError;

/// What we offer.
pub(crate) struct Offer<'a> {
    pub our_name: &'a str,
    pub versions: RangeInclusive<u16>,
    pub features: Features,
}

/// What both sides agreed on.
#[derive(Debug)]
pub(crate) struct Agreed {
    pub version: MessageVersion,
    pub features: Features,
}

/// Runs the exchange. `check_name` vets the name the peer announces;
/// `io_error` turns a stream error into the right [`TransportError`] (a
/// connecting site recognizes TLS alerts about its certificate there).
pub(crate) async fn exchange<S>(
    framed: &mut FramedReader<S>,
    offer: &Offer<'_>,
    peer: &str,
    check_name: impl FnOnce(&str) -> Result<(), TransportError>,
    io_error: impl Fn(io::Error) -> TransportError,
) -> Result<Agreed, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = Message::Hello {
        versions: offer.versions.clone(),
        site_name: offer.our_name.to_string(),
        features: offer.features,
    };
    send(framed, &hello, &io_error).await?;

    let (their_versions, their_name, their_features) =
        match receive(framed, peer, "Hello", &io_error).await? {
            Message::Hello {
                versions,
                site_name,
                features,
            } => (versions, site_name, features),
            other => return Err(unexpected_or_refusal(other, peer, "Hello")),
        };

    let (code, text, err) = match negotiate(offer.versions.clone(), their_versions.clone())
        .ok()
        .and_then(MessageVersion::from_u16)
    {
        None => {
            let mismatch = VersionMismatch {
                ours: offer.versions.clone(),
                theirs: their_versions,
            };
            let text = format!(
                "site {} speaks protocol versions {}..={}, site {} offered {}..={}; upgrade the older site",
                offer.our_name,
                mismatch.ours.start(),
                mismatch.ours.end(),
                their_name,
                mismatch.theirs.start(),
                mismatch.theirs.end(),
            );
            (
                RefuseCode::VersionMismatch,
                text,
                TransportError::VersionMismatch(mismatch),
            )
        }
        Some(version) => match check_name(&their_name) {
            Ok(()) => {
                return accept(
                    framed,
                    offer,
                    version,
                    their_name,
                    their_features,
                    peer,
                    &io_error,
                )
                .await;
            }
            Err(e) => (
                RefuseCode::NameMismatch,
                format!("site {}: {e}", offer.our_name),
                e,
            ),
        },
    };
    // Best effort: the peer learns why, then the connection closes; we
    // report our own reason.
    let _ = send(framed, &Message::refuse(code, text), &io_error).await;
    let _ = framed.get_mut().shutdown().await;
    Err(err)
}

/// Our verdict is yes: send `HelloAccept`, and check the peer's verdict.
async fn accept<S>(
    framed: &mut FramedReader<S>,
    offer: &Offer<'_>,
    version: MessageVersion,
    their_name: String,
    their_features: Features,
    peer: &str,
    io_error: &impl Fn(io::Error) -> TransportError,
) -> Result<Agreed, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let features = offer
        .features
        .intersection(their_features)
        .intersection(Features::ALL_KNOWN);
    let accept = Message::HelloAccept {
        version: version.as_u16(),
        site_name: offer.our_name.to_string(),
        features,
    };
    send(framed, &accept, io_error).await?;

    match receive(framed, peer, "HelloAccept", io_error).await? {
        Message::HelloAccept {
            version: v,
            site_name,
            features: f,
        } if v == version.as_u16() && f == features && site_name == their_name => {
            Ok(Agreed { version, features })
        }
        Message::HelloAccept {
            version: v,
            site_name,
            features: f,
        } => Err(TransportError::Disagreement {
            peer: peer.to_string(),
            detail: format!(
                "we agreed on version {version} with {features:?} for {their_name}, \
                 the peer on version {v} with {f:?} for {site_name}"
            ),
        }),
        other => Err(unexpected_or_refusal(other, peer, "HelloAccept")),
    }
}

async fn send<S>(
    framed: &mut FramedReader<S>,
    message: &Message,
    io_error: &impl Fn(io::Error) -> TransportError,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_message(framed.get_mut(), message, Compression::None)
        .await
        .map_err(|e| match e {
            StreamError::Io(e) => io_error(e),
            StreamError::Protocol(e) => TransportError::Encode(e),
        })
}

async fn receive<S>(
    framed: &mut FramedReader<S>,
    peer: &str,
    expected: &'static str,
    io_error: &impl Fn(io::Error) -> TransportError,
) -> Result<Message, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match framed.read_message().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(io_error(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the peer closed the connection while we waited for its {expected}"),
        ))),
        Err(StreamError::Io(e)) => Err(io_error(e)),
        Err(StreamError::Protocol(source)) => Err(TransportError::Protocol {
            peer: peer.to_string(),
            source,
        }),
    }
}

fn unexpected_or_refusal(message: Message, peer: &str, expected: &'static str) -> TransportError {
    let peer = peer.to_string();
    match message {
        Message::HelloRefuse { code, message } => TransportError::RefusedByPeer {
            peer,
            code,
            message,
        },
        Message::Error { code, message } => TransportError::PeerError {
            peer,
            code,
            message,
        },
        other => TransportError::UnexpectedMessage {
            peer,
            expected,
            got: other.tag(),
        },
    }
}
