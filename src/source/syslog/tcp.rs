//! TCP and TLS listener: accepts up to `max_connections` connections and reads each with its
//! own [`Framer`]. A connection waits (stops reading) while the pipeline's channel is full.

use super::framing::Framer;
use super::{Shared, peer_ip};
use crate::shutdown::Shutdown;
use crate::source::SourceMsg;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Sender;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// Bytes read from a connection at a time.
const READ_BUFFER: usize = 64 * 1024;
/// A connection's first read buffer: thousands of quiet peers must not cost 64 KiB each; a
/// read that fills it doubles it, up to [`READ_BUFFER`].
const FIRST_READ_BUFFER: usize = 4 * 1024;
/// A TLS client must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the stop signal, how long a connection still tries to hand over what it has read.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub(super) fn start(
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    shared: Arc<Shared>,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(
        listener,
        tls,
        max_connections,
        shared,
        tx,
        shutdown,
    ));
    Ok((task, local))
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    shared: Arc<Shared>,
    tx: Sender<SourceMsg>,
    mut shutdown: Shutdown,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tx.closed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let open = &shared.stats.open_connections;
                    if open.load(Ordering::Acquire) >= max_connections {
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        crate::events::syslog_connection_refused(
                            &shared.listen,
                            &peer.to_string(),
                            max_connections,
                        );
                        drop(stream);
                        continue;
                    }
                    open.fetch_add(1, Ordering::AcqRel);
                    let guard = ConnGuard(shared.clone());
                    conns.spawn(connection(
                        stream,
                        peer,
                        tls.clone(),
                        shared.clone(),
                        tx.clone(),
                        shutdown.clone(),
                        guard,
                    ));
                }
                Err(e) => {
                    tracing::warn!(listen = %shared.listen, error = %e, "syslog accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    tracing::debug!(listen = %shared.listen, "syslog listener stopped");
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tx: Sender<SourceMsg>,
    mut shutdown: Shutdown,
    _guard: ConnGuard,
) {
    tracing::debug!(listen = %shared.listen, %peer, "syslog connection opened");
    match tls {
        None => read_frames(stream, peer, &shared, &tx, shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                _ = shutdown.wait() => return,
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(s)) => read_frames(s, peer, &shared, &tx, shutdown).await,
                Ok(Err(e)) => tracing::warn!(
                    listen = %shared.listen,
                    %peer,
                    error = %e,
                    "syslog TLS handshake failed; connection closed"
                ),
                Err(_) => tracing::warn!(
                    listen = %shared.listen,
                    %peer,
                    "syslog TLS handshake timed out; connection closed"
                ),
            }
        }
    }
    tracing::debug!(listen = %shared.listen, %peer, "syslog connection closed");
}

/// Read frames until EOF, error, shutdown, or the receiver is gone.
async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    peer: SocketAddr,
    shared: &Shared,
    tx: &Sender<SourceMsg>,
    mut shutdown: Shutdown,
) {
    let ip = peer_ip(peer);
    let mut framer = Framer::new(shared.max_frame);
    let mut buf = vec![0u8; FIRST_READ_BUFFER];
    loop {
        let read = tokio::select! {
            _ = shutdown.wait() => return,
            r = reader.read(&mut buf) => r,
        };
        let mut lines = Vec::new();
        let mut emit = |frame: &[u8], truncated: bool| {
            lines.push(shared.line(ip, frame, truncated));
        };
        let eof = match read {
            Ok(0) => {
                framer.finish(&mut emit);
                true
            }
            Ok(n) => {
                framer.push(&buf[..n], &mut emit);
                if n == buf.len() && buf.len() < READ_BUFFER {
                    buf.resize(buf.len() * 2, 0);
                }
                false
            }
            Err(e) => {
                tracing::debug!(listen = %shared.listen, %peer, error = %e, "syslog connection read failed");
                framer.finish(&mut emit);
                true
            }
        };
        if !lines.is_empty() && !send(tx, lines, &mut shutdown, shared, peer).await {
            return;
        }
        if eof {
            return;
        }
    }
}

/// Wait for room in the channel (backpressure), but not beyond a short grace after the stop
/// signal. Returns false when the connection should end.
async fn send(
    tx: &Sender<SourceMsg>,
    lines: Vec<crate::source::LogLine>,
    shutdown: &mut Shutdown,
    shared: &Shared,
    peer: SocketAddr,
) -> bool {
    let permit = tokio::select! {
        p = tx.reserve() => p.ok(),
        _ = shutdown.wait() => {
            tokio::time::timeout(STOP_GRACE, tx.reserve()).await.ok().and_then(Result::ok)
        }
    };
    match permit {
        Some(p) => {
            p.send(SourceMsg::Lines(lines));
            !shutdown.is_triggered()
        }
        None => {
            if !tx.is_closed() {
                tracing::warn!(
                    listen = %shared.listen,
                    %peer,
                    lost = lines.len(),
                    "stopping: syslog messages already received could not be handed over"
                );
            }
            false
        }
    }
}
