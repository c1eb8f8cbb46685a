//! A cursor over fuzz bytes for harnesses that build structured input (the role `arbitrary`
//! plays elsewhere, kept to the few shapes these harnesses need). Running out of bytes yields
//! zeros and empty slices, never a panic.

/// Reads numbers, slices and strings off the front of the input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// Whether every byte was used.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 when none is left).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length byte, then that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// A length byte, then up to `max` characters, each a byte mapped into `alphabet`.
    pub fn token(&mut self, alphabet: &[u8], max: usize) -> String {
        let n = usize::from(self.u8()) % (max + 1);
        self.bytes(n)
            .iter()
            .map(|&b| char::from(alphabet[usize::from(b) % alphabet.len()]))
            .collect()
    }

    /// A length byte, then that many bytes as lossy UTF-8.
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }
}

/// Letters and digits.
pub const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
