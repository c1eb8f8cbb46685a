//! The syslog source: receives syslog messages over the network (`type = "syslog"`,
//! `listen = "udp://…" | "tcp://…" | "tls://…"`, SPEC §3).
//!
//! In: datagrams or TCP/TLS byte streams from any number of peers. Out: [`SourceMsg::Lines`]
//! on the pipeline's channel, one [`LogLine`] per message, text as received (the `<PRI>`
//! header stays; the `syslog` decoder reads it).
//!
//! * UDP: one message per datagram, one trailing LF or CRLF stripped. UDP has no
//!   backpressure: when the pipeline's channel is full the messages are dropped and counted
//!   (`events::syslog_dropped`, a warning at most every [`DROP_WARN_EVERY`]).
//! * TCP/TLS: framing per connection, see [`framing`]. A connection stops reading while the
//!   channel is full, so the sender's TCP window (and its own queue) absorbs the burst. At
//!   most `max_connections` connections are served; more are accepted and closed at once.
//! * Frames longer than `max_frame_bytes` are cut there and flagged truncated.
//!
//! **Stream identity and event ids.** Messages on the network cannot be read again, so there
//! is no position to checkpoint: lines of this source never produce checkpoints (the pipeline
//! asks [`is_syslog_stream`]). One [`StreamId`] exists per (listener, peer IP):
//! `key = "syslog:<listen>:<peer ip>"` (the `listen` string as configured; the peer port is
//! left out because it changes with every connection), `path = "<listen> from <peer ip>"` so
//! operators see who sent a line. A line's `offset` (and `end`, equal to it) is **the syslog
//! message hash** of SPEC §4: FNV-1a 64 of the message bytes (as kept, after cutting),
//! combined with how often the same peer already sent the same bytes during this run (0 for
//! the first time). Because rsyslog and most senders put the time (often in microseconds)
//! into every message, equal bytes almost always mean a re-sent message; the same message
//! re-sent after an agent restart gets the same event id, so the repository can tell the
//! duplicate. The occurrence table is bounded ([`MAX_OCCURRENCES`] entries); when it is full
//! it is cleared, which can only merge two byte-identical messages into one id.

pub mod framing;
mod tcp;
mod tls;
mod udp;

use crate::config::SourceConfig;
use crate::shutdown::Shutdown;
use crate::source::{LineFlags, LogLine, SourceMsg, StreamId, to_text};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

/// Prefix of the stream keys of this source.
pub const KEY_PREFIX: &str = "syslog:";
/// Bound of the (peer, message hash) → occurrences table.
pub const MAX_OCCURRENCES: usize = 65_536;
/// Bound of the peer → stream table (beyond it, it is cleared and rebuilt).
const MAX_PEERS: usize = 4_096;
/// The least time between two warnings about dropped UDP messages.
pub const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `udp://`
    Udp,
    /// `tcp://`
    Tcp,
    /// `tls://` (TCP with TLS; needs `[sources.tls]`)
    Tls,
}

/// A parsed `listen` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// Transport.
    pub proto: Proto,
    /// Address to bind (an IP literal and a port; `[::]` for IPv6).
    pub addr: SocketAddr,
}

impl Listen {
    /// Parse `udp://0.0.0.0:5514`, `tcp://[::]:6514`, `tls://127.0.0.1:6514`.
    pub fn parse(s: &str) -> Result<Listen, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("{s:?}: expected udp://, tcp:// or tls:// followed by IP:port")
        })?;
        let proto = match scheme {
            "udp" => Proto::Udp,
            "tcp" => Proto::Tcp,
            "tls" => Proto::Tls,
            _ => {
                return Err(format!(
                    "{s:?}: unknown scheme {scheme:?} (expected udp, tcp or tls)"
                ));
            }
        };
        let addr = rest.trim_end_matches('/').parse::<SocketAddr>().map_err(|_| {
            format!("{s:?}: expected an IP address and port after {scheme}://, e.g. 0.0.0.0:5514 or [::]:5514")
        })?;
        Ok(Listen { proto, addr })
    }
}

/// Whether a stream comes from a syslog listener (and so has no position to persist).
pub fn is_syslog_stream(stream: &StreamId) -> bool {
    stream.key.starts_with(KEY_PREFIX)
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Messages received (including dropped ones).
    pub received: AtomicU64,
    /// Messages dropped because the channel was full (UDP).
    pub dropped: AtomicU64,
    /// Messages cut at `max_frame_bytes`.
    pub truncated: AtomicU64,
    /// Connections refused at `max_connections`.
    pub refused: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicUsize,
}

/// A started listener.
#[derive(Debug)]
pub struct Listener {
    /// Ends after shutdown, once every connection has ended.
    pub task: JoinHandle<()>,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<ListenerStats>,
}

/// Start the listener of one `type = "syslog"` source as tokio tasks (call from within the
/// runtime). The socket is bound before this returns. The task ends when `shutdown` is
/// triggered or the receiver is gone.
pub fn spawn(
    cfg: &SourceConfig,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
) -> Result<(JoinHandle<()>, SocketAddr), std::io::Error> {
    let l = start(cfg, tx, shutdown)?;
    Ok((l.task, l.local_addr))
}

/// Like [`spawn`], also returning the listener's counters.
pub fn start(
    cfg: &SourceConfig,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
) -> Result<Listener, std::io::Error> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let listen_str = cfg
        .listen
        .as_deref()
        .ok_or_else(|| invalid(format!("sources.{}.listen is missing", cfg.name)))?;
    let listen = Listen::parse(listen_str)
        .map_err(|e| invalid(format!("sources.{}.listen: {e}", cfg.name)))?;
    let stats = Arc::new(ListenerStats::default());
    let shared = Arc::new(Shared {
        source: Arc::from(cfg.name.as_str()),
        listen: listen_str.to_owned(),
        max_frame: usize::try_from(cfg.max_frame_bytes.0)
            .unwrap_or(usize::MAX)
            .max(1),
        streams: Mutex::new(HashMap::new()),
        occurrences: Mutex::new(HashMap::new()),
        stats: stats.clone(),
    });
    let (task, local_addr) = match listen.proto {
        Proto::Udp => udp::start(listen.addr, shared, tx, shutdown)?,
        Proto::Tcp => tcp::start(
            listen.addr,
            None,
            cfg.max_connections.max(1),
            shared,
            tx,
            shutdown,
        )?,
        Proto::Tls => {
            let tls_cfg = cfg.tls.as_ref().ok_or_else(|| {
                invalid(format!(
                    "sources.{}: tls:// needs [sources.tls] with cert_file and key_file",
                    cfg.name
                ))
            })?;
            let acceptor = tls::acceptor(tls_cfg)
                .map_err(|e| invalid(format!("sources.{}.tls: {e}", cfg.name)))?;
            tcp::start(
                listen.addr,
                Some(acceptor),
                cfg.max_connections.max(1),
                shared,
                tx,
                shutdown,
            )?
        }
    };
    Ok(Listener {
        task,
        local_addr,
        stats,
    })
}

/// What the tasks of one listener share.
#[derive(Debug)]
struct Shared {
    source: Arc<str>,
    listen: String,
    max_frame: usize,
    streams: Mutex<HashMap<IpAddr, Arc<StreamId>>>,
    occurrences: Mutex<HashMap<(IpAddr, u64), u32>>,
    stats: Arc<ListenerStats>,
}

impl Shared {
    fn stream(&self, peer: IpAddr) -> Arc<StreamId> {
        // A poisoned lock only means another task panicked mid-insert; the map is still usable.
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = streams.get(&peer) {
            return s.clone();
        }
        if streams.len() >= MAX_PEERS {
            streams.clear();
        }
        let s = Arc::new(StreamId {
            source: self.source.clone(),
            key: format!("{KEY_PREFIX}{}:{peer}", self.listen),
            path: PathBuf::from(format!("{} from {peer}", self.listen)),
        });
        streams.insert(peer, s.clone());
        s
    }

    /// The message hash of `bytes` from `peer`, distinct for each repetition in this run.
    fn message_id(&self, peer: IpAddr, bytes: &[u8]) -> u64 {
        let hash = fnv1a64(bytes);
        let mut occ = self.occurrences.lock().unwrap_or_else(|e| e.into_inner());
        if occ.len() >= MAX_OCCURRENCES && !occ.contains_key(&(peer, hash)) {
            occ.clear();
        }
        let n = occ.entry((peer, hash)).or_insert(0);
        let seen = *n;
        *n = n.saturating_add(1);
        mix64(hash ^ u64::from(seen).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// One received frame → a line. Strips one trailing LF or CRLF.
    fn line(&self, peer: IpAddr, frame: &[u8], truncated: bool) -> LogLine {
        let frame = frame.strip_suffix(b"\n").unwrap_or(frame);
        let frame = frame.strip_suffix(b"\r").unwrap_or(frame);
        let stream = self.stream(peer);
        let offset = self.message_id(peer, frame);
        let (text, invalid_utf8) = to_text(frame);
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if truncated {
            self.stats.truncated.fetch_add(1, Ordering::Relaxed);
            crate::events::line_truncated(
                &crate::source::describe(&stream),
                offset,
                self.max_frame as u64,
                "max_frame_bytes",
            );
        }
        if invalid_utf8 {
            crate::events::invalid_utf8(&crate::source::describe(&stream), offset);
        }
        LogLine {
            stream,
            offset,
            end: offset,
            text,
            flags: LineFlags {
                truncated,
                invalid_utf8,
            },
        }
    }
}

/// Peers reached over an IPv6 socket from IPv4 show as `::ffff:a.b.c.d`; use the IPv4 form
/// so a peer has one stream whatever the listener's address family.
fn peer_ip(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

/// FNV-1a, 64 bit: fixed forever, so ids do not change with the Rust version.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finaliser: spreads FNV's weak high bits and the occurrence count.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
