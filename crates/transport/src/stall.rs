//! [`Stall`]: an I/O wrapper that fails a read or write which makes no
//! progress for a given time. This is how a dead peer is detected: a live
//! peer sends keepalives more often than the limit, and takes our bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Fails a read or write that stays pending for longer than `limit`
/// (`io::ErrorKind::TimedOut`). The clock starts when an operation starts
/// waiting, not when the previous one finished, so time the owner spends
/// elsewhere (not reading) does not count against the peer.
#[derive(Debug)]
pub(crate) struct Stall<T> {
    inner: T,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    waiting: bool,
}

impl<T> Stall<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
        }
    }

    /// The wrapped stream.
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }

    fn poll_with_deadline<R>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>>
    where
        T: Unpin,
    {
        if !self.waiting {
            self.deadline.as_mut().reset(Instant::now() + self.limit);
        }
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                self.waiting = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.waiting = true;
                ready!(self.deadline.as_mut().poll(cx));
                self.waiting = false;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress for {:?}", self.limit),
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_with_deadline(cx, |inner, cx| inner.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_with_deadline(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_with_deadline(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_with_deadline(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_with_deadline(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_times_out_and_a_chatty_one_does_not() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut far = Stall::new(far, Duration::from_secs(10));
        let mut byte = [0u8; 1];
        // Bytes every 6 s keep it alive for longer than the limit.
        for _ in 0..5 {
            let writer = async {
                tokio::time::sleep(Duration::from_secs(6)).await;
                near.write_all(b"x").await.unwrap();
            };
            let (_, read) = tokio::join!(writer, far.read_exact(&mut byte));
            read.unwrap();
        }
        // Time spent not reading does not count.
        tokio::time::sleep(Duration::from_secs(60)).await;
        near.write_all(b"y").await.unwrap();
        far.read_exact(&mut byte).await.unwrap();
        let started = Instant::now();
        let err = far.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
