//! Closes client connections that stop accepting bytes.
//!
//! A stream reader that never reads keeps its socket, its task's transcript and hyper's buffers
//! alive for as long as it stays connected; hyper has no write timeout. [`StallListener`] wraps
//! every accepted connection in [`WriteDeadline`], which fails a write that has made no progress
//! for the configured time, so hyper drops the connection. Any progress resets the clock: slow
//! readers are never cut, only stalled ones.
//!
//! A write only waits once the kernel's send buffer is full, and Linux grows that buffer up to
//! several MiB for a peer that does not read, so accepted sockets get a fixed
//! [`SEND_BUFFER_BYTES`]: a stalled reader then costs at most that much kernel memory and is
//! noticed after a bounded amount of output.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// Send buffer of accepted sockets (the kernel doubles it for its bookkeeping). Token streams
/// and API answers need far less; an artifact download over a LAN still runs at 100+ MB/s.
pub const SEND_BUFFER_BYTES: usize = 128 * 1024;

/// A TCP listener whose connections have TCP_NODELAY and fail writes stalled for longer than
/// `stall`.
pub struct StallListener {
    inner: TcpListener,
    stall: Duration,
}

impl StallListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, stall: Duration) -> Self {
        Self { inner, stall }
    }
}

impl Listener for StallListener {
    type Io = WriteDeadline<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.inner).await;
        // Token events are small writes: without TCP_NODELAY, Nagle's algorithm holds each one
        // back until the client's delayed ACK, adding tens of milliseconds to every token.
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        if let Err(e) = socket2::SockRef::from(&io).set_send_buffer_size(SEND_BUFFER_BYTES) {
            tracing::debug!(error = %e, "SO_SNDBUF not set");
        }
        (WriteDeadline::new(io, self.stall).with_peer(addr), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(&self.inner)
    }
}

/// A stream that can be set to close abortively.
pub trait AbortiveClose {
    /// Makes dropping the stream reset the connection instead of queueing a FIN behind data the
    /// peer will never take (which would leave the kernel retrying for minutes).
    fn set_abortive_close(&self);
}

impl AbortiveClose for TcpStream {
    fn set_abortive_close(&self) {
        if let Err(e) = self.set_zero_linger() {
            tracing::debug!(error = %e, "SO_LINGER 0 not set");
        }
    }
}

/// An I/O stream whose writes fail with [`io::ErrorKind::TimedOut`] after `stall` without
/// progress (and which then resets the connection when dropped). Reads pass through untouched.
pub struct WriteDeadline<S> {
    inner: S,
    stall: Duration,
    /// Armed while a write waits; dropped on progress.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The client, for the log line of a stall close.
    peer: Option<SocketAddr>,
}

impl<S: AbortiveClose> WriteDeadline<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            deadline: None,
            peer: None,
        }
    }

    /// Names the client in the log line of a stall close.
    pub fn with_peer(self, peer: SocketAddr) -> Self {
        Self {
            peer: Some(peer),
            ..self
        }
    }

    /// Turns a pending write into a timeout once the deadline passes; clears it when bytes
    /// went out. (A flush is no progress: on TCP it is always immediately ready.)
    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(res) = &r {
            if matches!(res, Ok(n) if *n > 0) {
                self.deadline = None;
            }
            return r;
        }
        let stall = self.stall;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if deadline.as_mut().poll(cx).is_ready() {
            self.inner.set_abortive_close();
            tracing::info!(
                stall_s = stall.as_secs(),
                peer = %self.peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                "closing a connection that accepted no bytes (write_stall_timeout_s)"
            );
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no bytes within write_stall_timeout_s",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + AbortiveClose + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    impl AbortiveClose for tokio::io::DuplexStream {
        fn set_abortive_close(&self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_peer_times_out_and_a_slow_one_does_not() {
        let stall = Duration::from_secs(5);
        // An in-memory pipe with a 64-byte buffer stands in for a socket whose peer never reads.
        let (a, mut peer) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(a, stall);
        let chunk = [b'x'; 16];

        // A slow reader: 16 bytes every 4 s keeps the writer going past the deadline.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                if peer.read_exact(&mut buf).await.is_err() {
                    break;
                }
            }
            peer // then it stops reading but keeps the pipe open
        });
        for _ in 0..12 {
            w.write_all(&chunk)
                .await
                .expect("progress resets the deadline");
        }
        let peer = reader.await.unwrap();
        // Now nobody reads: the buffer fills and the write fails after `stall`.
        let started = tokio::time::Instant::now();
        let err = loop {
            if let Err(e) = w.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= stall && waited < stall * 2, "{waited:?}");
        drop(peer);
    }
}
