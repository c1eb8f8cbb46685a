//! Sources produce [`LogLine`]s. Each line carries the stream it came from and its byte range,
//! so that (a) the AuditEvents made from it get ids that survive a restart, and (b) the read
//! position can be checkpointed once the events are safe.
//!
//! Sources never advance a persisted position themselves: they report how far they have read
//! (each line's `end`, or a journal cursor), and the pipeline advances a position only after
//! the spool has fsynced the events of every line up to it (delivery to the ARR happens later,
//! from the spool). Syslog lines have no position to keep: they are safe once spooled.

pub mod file;
pub mod journald;
pub mod nats;
pub mod syslog;

use std::path::PathBuf;
use std::sync::Arc;

/// The identity of one stream of lines: a file generation, a journald source, or a syslog
/// listener and peer. Shared (`Arc`) by all lines of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The configured source name (`[[sources]] name`).
    pub source: Arc<str>,
    /// Stable key of the stream within the source, e.g. `file:<dev>:<ino>:<head crc>` for a
    /// file. Part of every event id, so it must not change when the file is renamed.
    pub key: String,
    /// Where the stream was last seen (for messages and for positions).
    pub path: PathBuf,
}

/// Flags for lines the source had to alter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineFlags {
    /// The line was longer than `max_line_bytes` and was cut there.
    pub truncated: bool,
    /// The line held invalid UTF-8, replaced by U+FFFD.
    pub invalid_utf8: bool,
}

/// One line, without its terminator (and without a trailing `\r`).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The stream this line belongs to.
    pub stream: Arc<StreamId>,
    /// Byte offset of the first byte of the line in the stream.
    pub offset: u64,
    /// Byte offset just past the line terminator: where reading resumes after this line.
    pub end: u64,
    /// The text, valid UTF-8 (see `flags`).
    pub text: String,
    /// What the source had to change.
    pub flags: LineFlags,
}

impl LogLine {
    /// The stable position of this line, used in event ids.
    pub fn position(&self) -> String {
        format!("{}@{}", self.stream.key, self.offset)
    }
}

/// "Everything in `stream` before `offset` has been read": the unit of checkpointing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The stream.
    pub stream: Arc<StreamId>,
    /// The read position (the `end` of the last line read).
    pub offset: u64,
    /// For streams that resume by an opaque cursor instead of an offset (journald): the
    /// cursor of the last entry read. `None` for files.
    pub cursor: Option<String>,
}

/// What a source sends to the pipeline.
#[derive(Debug)]
pub enum SourceMsg {
    /// Lines in stream order.
    Lines(Vec<LogLine>),
    /// A stream's position moved without lines (e.g. truncation restarted it at 0).
    Position(Checkpoint),
    /// A stream is gone for good (deleted and fully read): its position can be forgotten.
    Forget(Arc<StreamId>),
    /// The named source has read everything that exists right now (used by `run --once`).
    CaughtUp(Arc<str>),
    /// Finished AuditEvents from a forwarding source (NATS): spooled as they are.
    Events(Vec<nats::Forwarded>),
}

/// Origin label of a stream for humans: `source:path`.
pub fn describe(stream: &StreamId) -> String {
    format!("{}:{}", stream.source, stream.path.display())
}

/// Buffer a lossy UTF-8 conversion and tell whether anything was replaced.
pub fn to_text(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let (text, bad) = to_text(b"ok \xff end");
        assert!(bad);
        assert_eq!(text, "ok \u{fffd} end");
        let (text, bad) = to_text("Ärzte".as_bytes());
        assert!(!bad);
        assert_eq!(text, "Ärzte");
    }
}
