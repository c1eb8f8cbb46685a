//! Stdout output: one Bundle JSON per line, flushed after each, so a reader of the pipe sees
//! whole Bundles as soon as they are accepted. A write error (e.g. a closed pipe) is fatal.

use super::DeliverError;
use std::io::Write;
use std::path::PathBuf;

/// Writes Bundles to standard output.
#[derive(Debug, Default)]
pub struct StdoutOutput {}

impl StdoutOutput {
    /// Write one Bundle and a newline, then flush.
    pub async fn write(&mut self, json: String) -> Result<(), DeliverError> {
        let path = PathBuf::from("<stdout>");
        super::directory::blocking(&path.clone(), move || {
            write_line(&mut std::io::stdout().lock(), &json)
                .map_err(|source| DeliverError::Io { path, source })
        })
        .await
    }
}

/// One line: the JSON (which is compact, so holds no newline), `\n`, flush.
fn write_line(w: &mut impl Write, json: &str) -> std::io::Result<()> {
    w.write_all(json.as_bytes())?;
    w.write_all(b"\n")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_writes_one_bundle_per_line() {
        let mut buf = Vec::new();
        write_line(&mut buf, r#"{"a":1}"#).unwrap();
        write_line(&mut buf, r#"{"b":2}"#).unwrap();
        assert_eq!(buf, b"{\"a\":1}\n{\"b\":2}\n");
    }
}
