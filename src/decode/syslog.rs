//! `syslog` decoder (stub).
use super::Decoded;
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// rsyslog file-format decoder.
#[derive(Debug, Clone)]
pub struct SyslogDecoder {
    /// Zone for stamps without offset.
    pub tz: TimeZone,
}

impl SyslogDecoder {
    /// Decode one line.
    pub fn decode(&self, text: &str, _now: Timestamp) -> Decoded {
        Decoded {
            message: text.to_owned(),
            ..Decoded::default()
        }
    }
}
