//! UDP listener: one message per datagram. Never waits for the pipeline: what does not fit
//! in the channel is dropped and counted.

use super::{DROP_WARN_EVERY, Shared, peer_ip};
use crate::shutdown::Shutdown;
use crate::source::SourceMsg;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;

/// Datagrams taken from the socket without waiting, per channel send.
const BATCH: usize = 256;
/// Largest possible UDP payload.
const DATAGRAM_MAX: usize = 65_535;

pub(super) fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    let sock = UdpSocket::from_std(std_sock)?;
    let local = sock.local_addr()?;
    let task = tokio::spawn(run(sock, shared, tx, shutdown));
    Ok((task, local))
}

async fn run(sock: UdpSocket, shared: Arc<Shared>, tx: Sender<SourceMsg>, mut shutdown: Shutdown) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut dropped_since_warn: u64 = 0;
    let mut last_warn: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.wait() => break,
            r = sock.recv_from(&mut buf) => r,
        };
        let mut lines = Vec::new();
        match first {
            Ok((n, from)) => lines.push(datagram(&shared, &buf[..n], from)),
            Err(e) => {
                // ICMP errors and the like surface here; they do not end the listener.
                tracing::debug!(listen = %shared.listen, error = %e, "syslog udp receive failed");
                continue;
            }
        }
        while lines.len() < BATCH {
            match sock.try_recv_from(&mut buf) {
                Ok((n, from)) => lines.push(datagram(&shared, &buf[..n], from)),
                Err(_) => break,
            }
        }
        let n = lines.len() as u64;
        // `lines_read` is counted by the pipeline when it takes the batch.
        match tx.try_send(SourceMsg::Lines(lines)) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => break,
            Err(TrySendError::Full(_)) => {
                shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
                crate::events::syslog_dropped(&shared.listen, n);
                dropped_since_warn += n;
            }
        }
        if dropped_since_warn > 0 && last_warn.is_none_or(|t| t.elapsed() >= DROP_WARN_EVERY) {
            crate::events::syslog_drops_summary(
                &shared.listen,
                dropped_since_warn,
                shared.stats.dropped.load(Ordering::Relaxed),
            );
            dropped_since_warn = 0;
            last_warn = Some(Instant::now());
        }
    }
    tracing::debug!(listen = %shared.listen, "syslog udp listener stopped");
}

fn datagram(shared: &Shared, bytes: &[u8], from: SocketAddr) -> crate::source::LogLine {
    let max = shared.max_frame;
    let truncated = bytes.len() > max;
    shared.line(peer_ip(from), &bytes[..bytes.len().min(max)], truncated)
}
