//! The partner throughput test (`offsite partner test NAME`): the
//! connecting side streams `BulkData` frames, the partner acknowledges each
//! with a `BulkAck`; the result is the rate until the last acknowledgement,
//! plus the keepalive RTT (median of several pings).
//!
//! The frames are real bulk traffic: BLAKE3-hashed, CRC'd, compressed if the
//! session negotiated zstd (the test data is incompressible, so they go out
//! as they are), and throttled by the session's bandwidth limit.

use std::time::Duration;

use bytes::Bytes;
use offsite_protocol::{ErrorCode, Message};
use tokio::time::Instant;

use crate::error::TransportError;
use crate::session::Session;

/// What a throughput test measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputReport {
    /// Payload bytes sent and acknowledged.
    pub bytes: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// Keepalive round trip, measured before the transfer (the median of
    /// [`RTT_SAMPLES`] pings).
    pub rtt: Duration,
}

impl ThroughputReport {
    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Sends `bytes` of test data in chunks of `chunk` bytes (at most
/// [`offsite_protocol::MAX_PAYLOAD_LEN`]) and waits for all acknowledgements.
/// The partner must route the session to [`serve_throughput_test`].
pub async fn throughput_test(
    session: &mut Session,
    bytes: u64,
    chunk: usize,
) -> Result<ThroughputReport, TransportError> {
    let chunk = chunk.clamp(1, offsite_protocol::MAX_PAYLOAD_LEN);
    let rtt = median_rtt(session).await?;
    let data = test_pattern(chunk);
    let chunks = bytes.div_ceil(chunk as u64);
    let sender = session.sender();
    let started = Instant::now();
    let send_all = async {
        let mut left = bytes;
        for seq in 0..chunks {
            let len = left.min(chunk as u64) as usize;
            left -= len as u64;
            let payload = data.slice(..len);
            sender.send(Message::BulkData { seq, payload }).await?;
        }
        Ok::<_, TransportError>(())
    };
    let await_acks = async {
        // The partner counts bytes per session; count ours from its first ack.
        let mut baseline = None;
        let mut acked = 0u64;
        while acked < chunks {
            match session.recv().await? {
                Some(Message::BulkAck { seq, bytes: total }) if seq == acked => {
                    let sent = ((seq + 1) * chunk as u64).min(bytes);
                    let base = *baseline.get_or_insert(total.wrapping_sub(sent));
                    if total.wrapping_sub(base) != sent {
                        return Err(ack_mismatch(session, seq, sent, total.wrapping_sub(base)));
                    }
                    acked += 1;
                }
                Some(other) => {
                    return Err(TransportError::UnexpectedMessage {
                        peer: session.info().peer_name.to_string(),
                        expected: "BulkAck in sequence",
                        got: other.tag(),
                    });
                }
                None => return Err(TransportError::Closed),
            }
        }
        Ok(())
    };
    tokio::try_join!(send_all, await_acks)?;
    Ok(ThroughputReport {
        bytes,
        elapsed: started.elapsed(),
        rtt,
    })
}

/// Keepalive round trips measured one after another before the transfer;
/// the report gives their median. One sample read whatever the first
/// ping met (a cold connection, a worker thread waking up): 84 to 383 µs
/// on the same loopback pair.
const RTT_SAMPLES: usize = 9;

async fn median_rtt(session: &Session) -> Result<Duration, TransportError> {
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for _ in 0..RTT_SAMPLES {
        samples.push(session.measure_rtt().await?);
    }
    samples.sort();
    Ok(samples[RTT_SAMPLES / 2])
}

fn ack_mismatch(session: &Session, seq: u64, expected: u64, got: u64) -> TransportError {
    TransportError::PeerError {
        peer: session.info().peer_name.to_string(),
        code: ErrorCode::Protocol,
        message: format!("ack {seq} counts {got} bytes, {expected} were sent"),
    }
}

/// Incompressible bytes (xorshift), the same for every test.
fn test_pattern(len: usize) -> Bytes {
    let mut state = 0x243f_6a88_85a3_08d3u64;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    Bytes::from(data)
}

/// The partner's side of the throughput test, and for now the default
/// handler of accepted sessions: acknowledges every `BulkData`, answers
/// requests with a failed `Response` (no request kinds are defined yet),
/// and returns when the peer ends the session.
pub async fn serve_throughput_test(mut session: Session) -> Result<(), TransportError> {
    let mut received = 0u64;
    loop {
        match session.recv().await? {
            Some(Message::BulkData { seq, payload }) => {
                received += payload.len() as u64;
                session
                    .send(Message::BulkAck {
                        seq,
                        bytes: received,
                    })
                    .await?;
            }
            Some(Message::Request { id, kind, .. }) => {
                let body = format!(r#"{{"error":"request kind {kind} is not supported"}}"#);
                session
                    .send(Message::Response {
                        id,
                        ok: false,
                        body: Bytes::from(body),
                    })
                    .await?;
            }
            Some(other) => {
                let got = other.tag();
                // A courtesy before failing: the error below is what counts.
                let _ = session
                    .send(Message::error(
                        ErrorCode::UnexpectedMessage,
                        format!("unexpected {got}"),
                    ))
                    .await;
                return Err(TransportError::UnexpectedMessage {
                    peer: session.info().peer_name.to_string(),
                    expected: "BulkData or Request",
                    got,
                });
            }
            None => {
                session.close().await;
                return Ok(());
            }
        }
    }
}
