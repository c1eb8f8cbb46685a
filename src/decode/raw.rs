//! `raw`: the whole line is the message.
use super::Decoded;

/// Decode a raw line.
pub fn decode(text: &str) -> Decoded {
    Decoded {
        message: text.to_owned(),
        ..Decoded::default()
    }
}
