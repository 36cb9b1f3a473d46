//! A session to a partner as the group runners use it: typed requests
//! with ids, and bulk batches under a window of unacknowledged frames and
//! the group's bandwidth limit.
//!
//! The runners hold a [`PeerLink`], a boxed [`Link`]: [`Channel`] over a
//! real [`Session`] in a daemon, and in the crate's tests a fake peer that
//! answers through a second in-process site's dispatch table (`testing`),
//! so the cycle, initial replication, verify, failover and reverse code
//! run unchanged against synthetic link failures and refusals.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use offsite_protocol::{BulkFrame, Message};
use offsite_transport::{DirectStream, Session, TokenBucket};

use crate::control::{HashList, Reply, Rpc};
use crate::wire::Hashes;
use crate::{RemoteError, ReplError};

/// Bulk frames in flight before the sender waits for acknowledgements.
const WINDOW: u64 = 32;

/// How long a failed send waits for the reason the session ended.
const SEND_FAILED_REASON: std::time::Duration = std::time::Duration::from_secs(2);

/// A future a [`Link`] returns (boxed: the runners hold links as trait
/// objects, so that a test can hand them a fake peer).
pub(crate) type LinkFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An open link to a partner, as [`Replication::channel`] hands it out.
///
/// [`Replication::channel`]: crate::Replication::channel
pub(crate) type PeerLink = Box<dyn Link>;

/// What the runners need of a link to their partner: requests answered in
/// order, bulk batches acknowledged before the next request's answer, and
/// the hand-over of the connection to a sync stream.
pub(crate) trait Link: Send {
    /// The partner's name, for errors.
    fn partner(&self) -> &str;

    /// Sends a request of `kind` (after every outstanding batch is
    /// acknowledged) and returns the answer's body.
    fn request(&mut self, kind: u16, body: Bytes) -> LinkFuture<'_, Result<Bytes, ReplError>>;

    /// Sends one bulk batch; waits for acknowledgements while too many are
    /// outstanding.
    fn send_batch(&mut self, payload: Vec<u8>) -> LinkFuture<'_, Result<(), ReplError>>;

    /// Sends one batch of write-log records built in place (each record
    /// checked by its CRC32C at the replica: the frame goes without its
    /// BLAKE3 where the session negotiated `SELF_CHECKED_BULK`); waits like
    /// [`send_batch`](Link::send_batch). Only to a replica whose
    /// [`PitBegun`](crate::wire::PitBegun) says `record_batches`.
    fn send_records(&mut self, frame: BulkFrame) -> LinkFuture<'_, Result<(), ReplError>>;

    /// Bulk payload bytes sent on this link.
    fn sent(&self) -> u64;

    /// Ends the link.
    fn close(self: Box<Self>) -> LinkFuture<'static, ()>;

    /// Hands the link's connection to blocking threads (the sync stream;
    /// see [`offsite_transport::DirectStream`]).
    fn into_direct(self: Box<Self>) -> LinkFuture<'static, Result<DirectStream, ReplError>>;
}

impl dyn Link + '_ {
    /// Sends a typed request (after every outstanding batch is
    /// acknowledged) and returns its typed answer.
    pub(crate) fn call<'a, R: Rpc>(
        &'a mut self,
        request: &R,
    ) -> impl Future<Output = Result<R::Reply, ReplError>> + Send + 'a {
        // Encoded before the future: it holds no reference to `request`.
        let body = request.encode();
        async move {
            let answer = self.request(R::KIND, body).await?;
            R::Reply::decode(&answer).map_err(|e| ReplError::Protocol {
                partner: self.partner().to_string(),
                why: format!("answer to {}: {e}", R::NAME),
            })
        }
    }

    /// BLAKE3 of `req.count` blocks at the replica, 32 bytes each.
    pub(crate) async fn hashes(&mut self, req: &Hashes) -> Result<Bytes, ReplError> {
        let HashList(answer) = self.call(req).await?;
        if answer.len() as u64 != req.count * 32 {
            return Err(ReplError::Protocol {
                partner: self.partner().to_string(),
                why: format!("{} hash bytes for {} blocks", answer.len(), req.count),
            });
        }
        Ok(answer)
    }
}

/// A session with request ids and bulk flow control.
pub(crate) struct Channel {
    session: Session,
    partner: String,
    next_id: u64,
    next_seq: u64,
    unacked: u64,
    bucket: Option<Arc<TokenBucket>>,
    /// Bulk payload bytes sent on this channel.
    sent: u64,
}

impl Channel {
    /// A channel over `session` to `partner`; bulk batches wait for
    /// `bucket` (the group's bandwidth limit) when there is one.
    pub(crate) fn new(
        session: Session,
        partner: &str,
        bucket: Option<Arc<TokenBucket>>,
    ) -> Channel {
        Channel {
            session,
            partner: partner.to_string(),
            next_id: 0,
            next_seq: 0,
            unacked: 0,
            bucket,
            sent: 0,
        }
    }

    fn transport(&self) -> impl Fn(offsite_transport::TransportError) -> ReplError + '_ {
        |source| ReplError::Transport {
            partner: self.partner.clone(),
            source,
        }
    }

    /// Why a send failed: a session that closed under a sender was most
    /// often ended by the peer's error (a full store, say), which the
    /// session's reader queued behind the acknowledgements still unread.
    /// That error is the truthful one; "session closed" only when the
    /// session ended without a word.
    async fn send_failed(&mut self, e: offsite_transport::TransportError) -> ReplError {
        if matches!(e, offsite_transport::TransportError::Closed) {
            // The reader queues its reason right after it stops the
            // session; its channel then closes, so this ends quickly.
            let drain = async {
                loop {
                    match self.session.recv().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => return None,
                        Err(why) => return Some(why),
                    }
                }
            };
            if let Ok(Some(why)) = tokio::time::timeout(SEND_FAILED_REASON, drain).await {
                return self.transport()(why);
            }
        }
        self.transport()(e)
    }

    /// Waits for one bulk acknowledgement.
    async fn take_ack(&mut self) -> Result<(), ReplError> {
        match self.session.recv().await.map_err(self.transport())? {
            Some(Message::BulkAck { .. }) => {
                self.unacked -= 1;
                Ok(())
            }
            Some(Message::Error { code, message }) => Err(ReplError::Refused(
                RemoteError::from_message_error(code, message),
            )),
            Some(other) => Err(ReplError::Protocol {
                partner: self.partner.clone(),
                why: format!(
                    "got {} while waiting for a bulk acknowledgement",
                    other.tag()
                ),
            }),
            None => Err(ReplError::Protocol {
                partner: self.partner.clone(),
                why: "the session closed during a transfer".into(),
            }),
        }
    }

    async fn send_bulk(&mut self, payload: Vec<u8>) -> Result<(), ReplError> {
        self.sent += payload.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent = self
            .session
            .sender()
            .send_limited(
                Message::BulkData {
                    seq,
                    payload: Bytes::from(payload),
                },
                self.bucket.as_deref(),
            )
            .await;
        if let Err(e) = sent {
            return Err(self.send_failed(e).await);
        }
        self.unacked += 1;
        while self.unacked > WINDOW {
            self.take_ack().await?;
        }
        Ok(())
    }

    async fn send_record_frame(&mut self, frame: BulkFrame) -> Result<(), ReplError> {
        self.sent += frame.payload_len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent = self
            .session
            .sender()
            .send_bulk_frame(frame, seq, true, self.bucket.as_deref())
            .await;
        if let Err(e) = sent {
            return Err(self.send_failed(e).await);
        }
        self.unacked += 1;
        while self.unacked > WINDOW {
            self.take_ack().await?;
        }
        Ok(())
    }

    /// Sends a request (after every outstanding batch is acknowledged) and
    /// returns the answer's body.
    async fn ask(&mut self, kind: u16, body: Bytes) -> Result<Bytes, ReplError> {
        while self.unacked > 0 {
            self.take_ack().await?;
        }
        self.next_id += 1;
        let id = self.next_id;
        let sent = self.session.send(Message::Request { id, kind, body }).await;
        if let Err(e) = sent {
            return Err(self.send_failed(e).await);
        }
        match self.session.recv().await.map_err(self.transport())? {
            Some(Message::Response { id: rid, ok, body }) if rid == id => {
                if ok {
                    Ok(body)
                } else {
                    Err(ReplError::Refused(RemoteError::from_body(&body)))
                }
            }
            Some(Message::Error { code, message }) => Err(ReplError::Refused(
                RemoteError::from_message_error(code, message),
            )),
            Some(other) => Err(ReplError::Protocol {
                partner: self.partner.clone(),
                why: format!("got {} instead of a response", other.tag()),
            }),
            None => Err(ReplError::Protocol {
                partner: self.partner.clone(),
                why: "the session closed before the answer".into(),
            }),
        }
    }
}

impl Link for Channel {
    fn partner(&self) -> &str {
        &self.partner
    }

    fn request(&mut self, kind: u16, body: Bytes) -> LinkFuture<'_, Result<Bytes, ReplError>> {
        Box::pin(self.ask(kind, body))
    }

    fn send_batch(&mut self, payload: Vec<u8>) -> LinkFuture<'_, Result<(), ReplError>> {
        Box::pin(self.send_bulk(payload))
    }

    fn send_records(&mut self, frame: BulkFrame) -> LinkFuture<'_, Result<(), ReplError>> {
        Box::pin(self.send_record_frame(frame))
    }

    fn sent(&self) -> u64 {
        self.sent
    }

    fn close(self: Box<Self>) -> LinkFuture<'static, ()> {
        Box::pin(self.session.close())
    }

    fn into_direct(self: Box<Self>) -> LinkFuture<'static, Result<DirectStream, ReplError>> {
        let partner = self.partner;
        let session = self.session;
        Box::pin(async move {
            session
                .into_direct()
                .await
                .map_err(|source| ReplError::Transport { partner, source })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use offsite_protocol::ErrorCode;
    use offsite_transport::{
        Identity, Listener, ListenerConfig, Partner, PeerName, PeerTable, SessionOptions,
    };

    use super::*;

    fn identity(name: &str) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Identity::from_pem(&key.serialize_pem(), &cert.pem()).unwrap()
    }

    /// A replica that refuses the first batch with a full store and keeps
    /// its session open: the primary's next send finds its session ended
    /// (its reader stops at a peer's error) and must say why, not
    /// "session closed" (the flake of `store_full` under load).
    #[tokio::test]
    async fn a_send_after_the_peers_error_says_the_peers_error() {
        let (a, b) = (identity("a"), identity("b"));
        let peers = Arc::new(PeerTable::new());
        peers.pin(PeerName::new("a").unwrap(), a.fingerprint().clone());
        let listener = Listener::new(ListenerConfig::new("b", b.clone(), peers)).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(listener.run(
            tcp,
            |mut session: Session| async move {
                if let Ok(Some(Message::BulkData { .. })) = session.recv().await {
                    let _ = session
                        .send(Message::error(
                            ErrorCode::StorageFull,
                            "no space left at site b",
                        ))
                        .await;
                }
                // Kept open, as the replica keeps a full store's session.
                tokio::time::sleep(Duration::from_secs(30)).await;
            },
            std::future::pending::<()>(),
        ));
        let partner = Partner {
            name: PeerName::new("b").unwrap(),
            address: addr.to_string(),
            fingerprint: b.fingerprint().clone(),
        };
        let session = offsite_transport::connect(&partner, &a, "a", &SessionOptions::default())
            .await
            .unwrap();
        let mut channel = Channel::new(session, "b", None);
        let mut failed = None;
        // Fewer batches than the window: every one is a send, never a
        // wait for an acknowledgement.
        for _ in 0..WINDOW {
            if let Err(e) = channel.send_bulk(vec![7; 4096]).await {
                failed = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let e = failed.expect("a send fails once the peer refused");
        assert!(e.to_string().contains("no space left at site b"), "{e}");
    }
}
