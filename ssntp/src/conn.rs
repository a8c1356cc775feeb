//! Buffered frame IO over any async byte stream (TLS in production, `tokio::io::duplex` in
//! tests). Reading decodes frames; it never interprets payloads. [`write_loop`] is the one
//! writer task of a connection, server side and client side alike.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::frame::{self, Frame};
use crate::payload::Message;
use crate::uuid::Uuid;

/// Size of each read from the socket while frames keep coming. Big enough that one read
/// usually carries many small frames (throughput).
const READ_CHUNK: usize = 16 * 1024;
/// Size of the read that waits for the next frame with nothing buffered: most connections are
/// idle most of the time, and a launcher's report fits; 10,000 idle connections stay cheap.
const IDLE_CHUNK: usize = 2 * 1024;

/// Most bytes the writer gathers from its queue into one write.
pub const WRITE_BATCH: usize = 64 * 1024;
/// How long one write may block before the peer counts as stuck and the connection ends.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last frames (an ERROR, say) and the TLS close_notify may take at the end.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`; frames with a payload above `max_payload` are refused.
    pub fn new(inner: R, max_payload: usize) -> Self {
        Self { inner, buf: BytesMut::new(), max_payload }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    ///
    /// # Errors
    /// IO errors, a bad frame header ([`Error::Frame`]), or EOF inside a frame
    /// ([`Error::Truncated`]).
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = frame::decode(&mut self.buf, self.max_payload)? {
                return Ok(Some(frame));
            }
            let chunk = if self.buf.is_empty() { IDLE_CHUNK } else { READ_CHUNK };
            if self.buf.capacity() - self.buf.len() < chunk / 4 {
                self.buf.reserve(chunk);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(Error::Truncated) };
            }
        }
    }

    /// The next frame, which must exist (EOF is [`Error::Closed`]).
    ///
    /// # Errors
    /// As [`FrameReader::read_frame`], plus [`Error::Closed`].
    pub async fn expect_frame(&mut self) -> Result<Frame> {
        self.read_frame().await?.ok_or(Error::Closed)
    }
}

/// Writes frames to a byte stream, batching what is queued into one write.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, buf: BytesMut::new() }
    }

    /// Adds a frame to the pending batch; nothing is written until [`FrameWriter::flush`].
    pub fn queue(&mut self, frame: &Frame) {
        frame.encode(&mut self.buf);
    }

    /// Bytes waiting in the batch.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes the batch and flushes the stream.
    ///
    /// # Errors
    /// IO errors.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Queues and flushes one frame.
    ///
    /// # Errors
    /// IO errors.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        self.queue(frame);
        self.flush().await
    }

    /// Encodes, queues and flushes one message from `origin`.
    ///
    /// # Errors
    /// IO errors.
    pub async fn write_message(&mut self, origin: Uuid, message: &Message) -> Result<()> {
        self.write_frame(&message.to_frame(origin)).await
    }

    /// Flushes and shuts the stream down (TLS close_notify).
    ///
    /// # Errors
    /// IO errors.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.flush().await?;
        self.inner.shutdown().await?;
        Ok(())
    }
}

/// Drains `queue` into batched writes until the queue closes or `until` completes; then writes
/// what is still queued and shuts the stream down (close_notify), within [`CLOSE_TIMEOUT`].
///
/// # Errors
/// A write failed, or blocked for [`WRITE_TIMEOUT`] (the peer stopped reading): the caller ends
/// the connection. Nothing more is written then.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut queue: mpsc::Receiver<Frame>,
    until: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            biased;
            frame = queue.recv() => {
                let Some(frame) = frame else { break };
                writer.queue(&frame);
                while writer.pending() < WRITE_BATCH {
                    match queue.try_recv() {
                        Ok(frame) => writer.queue(&frame),
                        Err(_) => break,
                    }
                }
                match tokio::time::timeout(WRITE_TIMEOUT, writer.flush()).await {
                    Ok(result) => result?,
                    Err(_) => return Err(Error::Timeout("writing: the peer read nothing for 10 s")),
                }
            }
            () = &mut until => break,
        }
    }
    while let Ok(frame) = queue.try_recv() {
        writer.queue(&frame);
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.shutdown()).await;
    Ok(())
}

/// How long a peer may leave sent data unacknowledged, or the line silent, before its
/// connection counts as dead: a peer whose machine vanished (power, a cut link) sends no FIN,
/// and without this a launcher would keep writing heartbeats into a dead socket for minutes
/// instead of moving to the next scheduler.
pub const DEAD_PEER_AFTER: Duration = Duration::from_secs(10);

/// Makes the kernel end the connection of a peer that vanished within about
/// [`DEAD_PEER_AFTER`]: keepalive probes on an idle line (after 4 s, every 2 s, 3 of them) and
/// a limit on unacknowledged data (`TCP_USER_TIMEOUT`) on a busy one.
pub fn detect_dead_peers(tcp: &tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(4))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
    if let Err(e) = socket.set_tcp_user_timeout(Some(DEAD_PEER_AFTER)) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Kind, Status};

    fn frame() -> Frame {
        Frame { kind: Kind::Status(Status::Ready), origin: Uuid::nil(), payload: bytes::Bytes::from(vec![0u8; 1000]) }
    }

    #[tokio::test(start_paused = true)]
    #[allow(clippy::disallowed_methods)] // tokio's paused test clock
    async fn a_peer_that_stops_reading_ends_the_writer_after_the_timeout() {
        let (ours, _theirs) = tokio::io::duplex(4096); // the other end never reads
        let (tx, rx) = mpsc::channel(64);
        for _ in 0..10 {
            tx.send(frame()).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        let ended = write_loop(FrameWriter::new(ours), rx, std::future::pending()).await;
        assert!(matches!(ended, Err(Error::Timeout(_))), "{ended:?}");
        assert!(started.elapsed() >= WRITE_TIMEOUT);
    }

    #[tokio::test]
    async fn what_is_queued_is_written_before_the_end() {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(64);
        for _ in 0..3 {
            tx.send(frame()).await.unwrap();
        }
        drop(tx);
        write_loop(FrameWriter::new(ours), rx, std::future::pending()).await.unwrap();
        let mut reader = FrameReader::new(theirs, 1 << 20);
        for _ in 0..3 {
            assert_eq!(reader.read_frame().await.unwrap(), Some(frame()));
        }
    }
}
