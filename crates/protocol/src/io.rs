//! Frames over tokio byte streams: [`FramedReader`] and [`write_frame`].
//! No policy (timeouts, keepalive, retries) lives here; the transport adds it.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::StreamError;
use crate::frame::{Compression, EncodedFrame, FrameDecoder, encode_frame, frame_len_hint};
use crate::message::Message;

/// Bytes asked of the stream per read while no frame size is known.
const READ_CHUNK: usize = 64 << 10;

/// Reads [`Message`]s from a byte stream. Payloads are slices of the read
/// buffer (no copy after the read itself).
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder,
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
        }
    }

    /// The next message; `Ok(None)` when the stream ends cleanly between
    /// frames. A stream that ends inside a frame is
    /// [`ProtocolError::Truncated`].
    pub async fn read_message(&mut self) -> Result<Option<Message>, StreamError> {
        loop {
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(message));
            }
            let want = frame_len_hint(&self.buf).map_or(READ_CHUNK, |total| {
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
        (self.inner, self.buf)
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
