//! A session to a partner as the group runners use it: typed requests
//! with ids, and bulk batches under a window of unacknowledged frames and
//! the group's bandwidth limit.

use std::sync::Arc;

use bytes::Bytes;
use offsite_protocol::Message;
use offsite_transport::{Session, TokenBucket};

use crate::control::{HashList, Reply, Rpc};
use crate::wire::Hashes;
use crate::{RemoteError, ReplError};

/// Bulk frames in flight before the sender waits for acknowledgements.
const WINDOW: u64 = 32;

/// A session with request ids and bulk flow control.
pub(crate) struct Channel {
    pub(crate) session: Session,
    partner: String,
    next_id: u64,
    next_seq: u64,
    unacked: u64,
    bucket: Option<Arc<TokenBucket>>,
    /// Bulk payload bytes sent on this channel.
    pub(crate) sent: u64,
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

    pub(crate) async fn close(self) {
        self.session.close().await;
    }

    /// Hands the channel's connection to blocking threads (the sync
    /// stream; see [`offsite_transport::DirectStream`]).
    pub(crate) async fn into_direct(
        self,
    ) -> Result<offsite_transport::DirectStream, offsite_transport::TransportError> {
        self.session.into_direct().await
    }

    fn transport(&self) -> impl Fn(offsite_transport::TransportError) -> ReplError + '_ {
        |source| ReplError::Transport {
            partner: self.partner.clone(),
            source,
        }
    }

    /// Waits for one bulk acknowledgement.
    pub(crate) async fn take_ack(&mut self) -> Result<(), ReplError> {
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

    pub(crate) async fn send_batch(&mut self, payload: Vec<u8>) -> Result<(), ReplError> {
        self.sent += payload.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.session
            .sender()
            .send_limited(
                Message::BulkData {
                    seq,
                    payload: Bytes::from(payload),
                },
                self.bucket.as_deref(),
            )
            .await
            .map_err(self.transport())?;
        self.unacked += 1;
        while self.unacked > WINDOW {
            self.take_ack().await?;
        }
        Ok(())
    }

    /// Sends a typed request (after every outstanding batch is
    /// acknowledged) and returns its typed answer.
    pub(crate) async fn call<R: Rpc>(&mut self, request: &R) -> Result<R::Reply, ReplError> {
        let answer = self.request(R::KIND, request.encode()).await?;
        R::Reply::decode(&answer).map_err(|e| ReplError::Protocol {
            partner: self.partner.clone(),
            why: format!("answer to {}: {e}", R::NAME),
        })
    }

    /// Sends a request (after every outstanding batch is acknowledged) and
    /// returns the answer's body.
    async fn request(&mut self, kind: u16, body: Bytes) -> Result<Bytes, ReplError> {
        while self.unacked > 0 {
            self.take_ack().await?;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.session
            .send(Message::Request { id, kind, body })
            .await
            .map_err(self.transport())?;
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

    /// BLAKE3 of `req.count` blocks at the replica, 32 bytes each.
    pub(crate) async fn hashes(&mut self, req: &Hashes) -> Result<Bytes, ReplError> {
        let HashList(answer) = self.call(req).await?;
        if answer.len() as u64 != req.count * 32 {
            return Err(ReplError::Protocol {
                partner: self.partner.clone(),
                why: format!("{} hash bytes for {} blocks", answer.len(), req.count),
            });
        }
        Ok(answer)
    }
}
