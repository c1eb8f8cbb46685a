//! Multi-line records: physical [`LogLine`]s of one stream in, logical records out.
//!
//! * [`Multiline::Indented`] (PostgreSQL stderr): a line starting with a TAB or a space
//!   continues the record before it. PostgreSQL writes a TAB after every newline inside a
//!   message; that one TAB is removed again, so the joined text equals the message as
//!   csvlog/jsonlog carry it. Other indentation (spaces) is kept.
//! * [`Multiline::Csv`] (PostgreSQL csvlog, RFC 4180): a record ends at the line where its
//!   double quotes are balanced (a doubled `""` counts twice, so parity is enough).
//!
//! Guarantees: a record's `offset` is the offset of its first physical line and its `end` the
//! end of its last one, so a checkpoint at `end` never splits a record; flags are OR'ed; a
//! record is cut (and flagged truncated) at `max_bytes` of text or `max_lines` lines — the
//! cut lines still advance `end`, and a CSV record whose quotes never balance is closed after
//! `max_lines` lines so one broken quote cannot swallow the rest of a file.

use crate::source::LogLine;

/// How many physical lines a record may span unless configured otherwise.
pub const DEFAULT_MAX_LINES: usize = 1000;

pub use crate::config::Multiline;

/// Joins the physical lines of one stream into records.
#[derive(Debug)]
pub struct Joiner {
    mode: Multiline,
    max_bytes: usize,
    max_lines: usize,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    line: LogLine,
    lines: usize,
    /// Csv: number of `"` seen so far is odd.
    open_quote: bool,
    /// The text was cut: later lines only extend `end`.
    full: bool,
}

fn quotes_odd(text: &str) -> bool {
    text.bytes().filter(|&b| b == b'"').count() % 2 == 1
}

impl Joiner {
    /// A joiner for one stream; `max_bytes`/`max_lines` of 0 are treated as 1.
    pub fn new(mode: Multiline, max_bytes: usize, max_lines: usize) -> Joiner {
        Joiner {
            mode,
            max_bytes: max_bytes.max(1),
            max_lines: max_lines.max(1),
            pending: None,
        }
    }

    /// Feed one physical line (in stream order); returns the records it completed: a record
    /// whose `offset` is its first line's offset, `end` its last line's end, text joined with
    /// `'\n'`, flags OR'ed; cut at `max_bytes` / `max_lines` (flagged truncated).
    pub fn push(&mut self, line: LogLine) -> Vec<LogLine> {
        match self.mode {
            Multiline::None => vec![line],
            Multiline::Indented => {
                let continues = line.text.starts_with(['\t', ' ']);
                if continues && self.pending.is_some() {
                    let text = line.text.strip_prefix('\t').unwrap_or(&line.text);
                    let text = text.to_owned();
                    self.append(line, &text);
                    return Vec::new();
                }
                let done = self.pending.take().map(|p| p.line);
                self.pending = Some(self.start(line));
                done.into_iter().collect()
            }
            Multiline::Csv => {
                if self.pending.is_some() {
                    let text = line.text.clone();
                    let odd = quotes_odd(&text);
                    self.append(line, &text);
                    let full = match self.pending.as_mut() {
                        Some(p) => {
                            p.open_quote ^= odd;
                            !p.open_quote || p.lines >= self.max_lines
                        }
                        None => false,
                    };
                    if full {
                        return self.close().into_iter().collect();
                    }
                    return Vec::new();
                }
                if !quotes_odd(&line.text) {
                    let p = self.start(line);
                    return vec![p.line];
                }
                let mut p = self.start(line);
                p.open_quote = true;
                if p.lines >= self.max_lines {
                    p.line.flags.truncated = true;
                    return vec![p.line];
                }
                self.pending = Some(p);
                Vec::new()
            }
        }
    }

    /// Emit the pending record (its continuation may never come: on a timeout or at EOF).
    pub fn flush(&mut self) -> Option<LogLine> {
        self.pending.take().map(|p| p.line)
    }

    /// Whether a record is waiting for more lines.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn close(&mut self) -> Option<LogLine> {
        let mut p = self.pending.take()?;
        if p.open_quote {
            p.line.flags.truncated = true;
        }
        Some(p.line)
    }

    fn start(&self, mut line: LogLine) -> Pending {
        if line.text.len() > self.max_bytes {
            cut(&mut line.text, self.max_bytes);
            line.flags.truncated = true;
        }
        Pending {
            line,
            lines: 1,
            open_quote: false,
            full: false,
        }
    }

    /// Add a continuation line (its text given separately, already un-indented).
    fn append(&mut self, line: LogLine, text: &str) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        p.lines += 1;
        p.line.end = line.end;
        p.line.flags.truncated |= line.flags.truncated;
        p.line.flags.invalid_utf8 |= line.flags.invalid_utf8;
        if p.full || p.lines > self.max_lines {
            p.full = true;
            p.line.flags.truncated = true;
            return;
        }
        let room = self.max_bytes.saturating_sub(p.line.text.len());
        if room < 1 + text.len() {
            p.line.flags.truncated = true;
            if room > 1 {
                let mut part = text.to_owned();
                cut(&mut part, room - 1);
                p.line.text.push('\n');
                p.line.text.push_str(&part);
            }
            p.full = true;
            return;
        }
        p.line.text.push('\n');
        p.line.text.push_str(text);
    }
}

/// Cut `s` to at most `max` bytes, at a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{LineFlags, StreamId};
    use std::path::PathBuf;
    use std::sync::Arc;

    /// Physical lines of `text` with their offsets, as a file source would deliver them.
    fn lines(text: &str) -> Vec<LogLine> {
        let stream = Arc::new(StreamId {
            source: Arc::from("t"),
            key: "k".into(),
            path: PathBuf::from("/x"),
        });
        let mut out = Vec::new();
        let mut off = 0u64;
        for l in text.split_inclusive('\n') {
            let end = off + l.len() as u64;
            out.push(LogLine {
                stream: stream.clone(),
                offset: off,
                end,
                text: l.trim_end_matches('\n').to_owned(),
                flags: LineFlags::default(),
            });
            off = end;
        }
        out
    }

    fn join(mode: Multiline, text: &str, max_bytes: usize, max_lines: usize) -> Vec<LogLine> {
        let mut j = Joiner::new(mode, max_bytes, max_lines);
        let mut out = Vec::new();
        for l in lines(text) {
            out.extend(j.push(l));
        }
        out.extend(j.flush());
        assert!(!j.has_pending());
        out
    }

    #[test]
    fn indented_continuations_join_and_lose_the_tab_postgres_added() {
        let text = "a LOG:  x,\"SELECT 1\n\t  FROM t\n\t WHERE y\",<none>\nb LOG:  next\n  space kept\nc\n";
        let out = join(Multiline::Indented, text, 1 << 16, 100);
        let texts: Vec<&str> = out.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "a LOG:  x,\"SELECT 1\n  FROM t\n WHERE y\",<none>",
                "b LOG:  next\n  space kept",
                "c"
            ]
        );
        assert_eq!((out[0].offset, out[0].end), (0, 48));
        assert_eq!(out[1].offset, 48);
        assert_eq!(out[2].end, text.len() as u64);
    }

    #[test]
    fn indented_record_is_pending_until_the_next_start_line() {
        let mut j = Joiner::new(Multiline::Indented, 1000, 10);
        let mut ls = lines("first\n\tmore\nsecond\n").into_iter();
        assert!(j.push(ls.next().unwrap()).is_empty());
        assert!(j.push(ls.next().unwrap()).is_empty());
        assert!(j.has_pending());
        let done = j.push(ls.next().unwrap());
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].text, "first\nmore");
        assert_eq!(j.flush().unwrap().text, "second");
        assert!(j.flush().is_none());
    }

    #[test]
    fn leading_continuation_without_record_starts_one() {
        let out = join(Multiline::Indented, "\torphan\nx\n", 100, 10);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].text, "\torphan");
    }

    #[test]
    fn csv_record_ends_when_quotes_balance() {
        let text = "1,\"a \"\"q\"\"\nline2\n line3\",x\n2,\"b\",y\n3,\"open\n\"\"\"\n";
        let out = join(Multiline::Csv, text, 1 << 16, 100);
        let texts: Vec<&str> = out.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "1,\"a \"\"q\"\"\nline2\n line3\",x",
                "2,\"b\",y",
                "3,\"open\n\"\"\""
            ]
        );
        assert!(out.iter().all(|l| !l.flags.truncated));
        assert_eq!(out[1].offset, out[0].end);
        assert_eq!(out[2].end, text.len() as u64);
    }

    #[test]
    fn unbalanced_csv_record_is_closed_after_max_lines() {
        let out = join(Multiline::Csv, "1,\"never closed\na\nb\nc\n2,ok\n", 1000, 3);
        assert_eq!(out[0].text, "1,\"never closed\na\nb");
        assert!(out[0].flags.truncated);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[2].text, "2,ok");
    }

    #[test]
    fn records_are_cut_at_max_bytes_but_end_covers_all_lines() {
        let text = "start\n\taaaaaaaaaa\n\tbbbbbbbbbb\nnext\n";
        let out = join(Multiline::Indented, text, 12, 100);
        assert_eq!(out[0].text, "start\naaaaaa");
        assert!(out[0].flags.truncated);
        assert_eq!(out[0].end, 30);
        assert_eq!(out[1].text, "next");
        assert!(!out[1].flags.truncated);
    }

    #[test]
    fn flags_are_ored_and_none_mode_passes_lines_through() {
        let mut ls = lines("a\n\tb\n");
        ls[1].flags.invalid_utf8 = true;
        let mut j = Joiner::new(Multiline::Indented, 100, 10);
        for l in ls.clone() {
            assert!(j.push(l).is_empty());
        }
        let r = j.flush().unwrap();
        assert!(r.flags.invalid_utf8);
        let mut n = Joiner::new(Multiline::None, 100, 10);
        assert_eq!(n.push(ls[1].clone()).len(), 1);
        assert!(!n.has_pending());
    }
}
