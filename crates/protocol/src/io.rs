//! Frames over tokio byte streams: [`FramedReader`] and [`write_frame`].
//! No policy (timeouts, keepalive, retries) lives here; the transport adds it.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ProtocolError, StreamError};
use crate::frame::{Compression, EncodedFrame, FrameDecoder, encode_frame, frame_len_hint};
use crate::message::Message;

/// Bytes asked of the stream per read while no frame size is known.
const READ_CHUNK: usize = 64 << 10;
/// Frames at least this large are read into a buffer of their own, taken
/// from a pool (see [`FramedReader`]).
const POOLED_FRAME_MIN: usize = 128 << 10;
/// Frame buffers kept for reuse per reader: enough for the frames a
/// session typically holds in flight (its inbound queue), bounded in bytes.
const POOLED_BUFFERS: usize = 32;
/// Most bytes of frame buffers kept for reuse per reader.
const POOLED_BYTES: usize = 64 << 20;

/// Reads [`Message`]s from a byte stream. Payloads are slices of the read
/// buffer (no copy after the read itself).
///
/// Large frames (bulk data) are read straight into a buffer of their own
/// that returns to a small per-reader pool when the last slice of it is
/// dropped, so a steady stream of 1 MiB blocks reuses warm memory instead of
/// faulting in fresh pages for every frame (measured: ~1 page fault per
/// 17 KB received without the pool).
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    pool: BufferPool,
    /// A large frame being read: kept here, not in the reading future, so
    /// that a read cancelled half-way (a session's handover) loses nothing.
    large: Option<LargeFrame>,
}

/// The bytes of a large frame read so far, in its pooled buffer.
#[derive(Debug)]
struct LargeFrame {
    buf: Vec<u8>,
    total: usize,
}

/// Frame buffers waiting for reuse.
#[derive(Debug, Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// An empty buffer of at least `capacity` bytes: the smallest pooled
    /// one that fits, or a new one. When none fits, the smallest pooled
    /// buffer is dropped, so the pool follows the frame size in use.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut free = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let mut buf = free.swap_remove(i);
            buf.clear();
            return buf;
        }
        let smallest = free
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = smallest {
            free.swap_remove(i);
        }
        Vec::with_capacity(capacity)
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let pooled: usize = free.iter().map(Vec::capacity).sum();
        if free.len() < POOLED_BUFFERS && pooled + buf.capacity() <= POOLED_BYTES {
            free.push(buf);
        }
    }
}

/// A frame's buffer, returned to its pool when the last `Bytes` of it drops.
struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    /// A reader with an empty buffer.
    pub fn new(inner: R) -> Self {
        Self::with_buffer(inner, BytesMut::new())
    }

    /// A reader that first decodes what is already in `buf` (bytes read past
    /// the last frame by a previous reader of the same stream).
    pub fn with_buffer(inner: R, buf: BytesMut) -> Self {
        Self {
            inner,
            buf,
            decoder: FrameDecoder::new(),
            pool: BufferPool::default(),
            large: None,
        }
    }

    /// See [`FrameDecoder::accept_unhashed_bulk`].
    pub fn accept_unhashed_bulk(&mut self, accept: bool) {
        self.decoder.accept_unhashed_bulk(accept);
    }

    /// The next message; `Ok(None)` when the stream ends cleanly between
    /// frames. A stream that ends inside a frame is
    /// [`ProtocolError::Truncated`].
    ///
    /// Cancel-safe: a read dropped before it returns keeps the bytes it
    /// read for the next one (or for [`into_parts`](Self::into_parts)).
    pub async fn read_message(&mut self) -> Result<Option<Message>, StreamError> {
        loop {
            if let Some(LargeFrame { buf, .. }) = self.large.take_if(|l| l.buf.len() == l.total) {
                let frame = Bytes::from_owner(Pooled {
                    buf,
                    pool: self.pool.clone(),
                });
                return Ok(Some(self.decoder.decode_frame(frame)?));
            }
            if let Some(LargeFrame { buf, total }) = &mut self.large {
                // Straight into the frame's own buffer.
                let want = *total - buf.len();
                if self.inner.read_buf(&mut buf.limit(want)).await? == 0 {
                    return Err(ProtocolError::Truncated {
                        have: buf.len(),
                        need: *total,
                    }
                    .into());
                }
                continue;
            }
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(message));
            }
            let total = frame_len_hint(&self.buf);
            if let Some(total) = total.filter(|&t| t >= POOLED_FRAME_MIN) {
                let mut buf = self.pool.take(total);
                let have = self.buf.len().min(total);
                buf.extend_from_slice(&self.buf[..have]);
                bytes::Buf::advance(&mut self.buf, have);
                self.large = Some(LargeFrame { buf, total });
                continue;
            }
            let want = total.map_or(READ_CHUNK, |total| {
                total.saturating_sub(self.buf.len()).max(READ_CHUNK)
            });
            self.buf.reserve(want);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return match self.decoder.decode_eof(&mut self.buf)? {
                    Some(message) => Ok(Some(message)),
                    None => Ok(None),
                };
            }
        }
    }

    /// The stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The stream and the bytes read but not yet decoded.
    pub fn into_parts(self) -> (R, BytesMut) {
        let Some(large) = self.large else {
            return (self.inner, self.buf);
        };
        let mut ahead = BytesMut::with_capacity(large.buf.len() + self.buf.len());
        ahead.extend_from_slice(&large.buf);
        ahead.extend_from_slice(&self.buf);
        (self.inner, ahead)
    }
}

/// Writes an encoded frame: one vectored write sequence of header, payload
/// and trailer, so the payload is not copied into an intermediate buffer.
/// Does not flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: EncodedFrame,
) -> std::io::Result<()> {
    let mut buf = frame.into_buf();
    writer.write_all_buf(&mut buf).await
}

/// Encodes `message`, writes it and flushes.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    compression: Compression,
) -> Result<(), StreamError> {
    let frame = encode_frame(message, compression)?;
    write_frame(writer, frame).await?;
    writer.flush().await?;
    Ok(())
}
