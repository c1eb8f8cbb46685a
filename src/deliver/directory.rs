//! Directory output: each Bundle becomes one file `<millis>-<bundle-id>.json`.
//!
//! In: Bundle JSON. Out: a file that is either absent or complete (tmp → fsync → rename →
//! fsync dir). Names are strictly increasing in lexical order, also across restarts (the
//! counter starts above the largest name already in the directory), so a consumer that
//! reads the directory sorted by name sees Bundles in delivery order. Files are 0600 in a
//! 0700 directory. The same helpers write dead letters.

use super::DeliverError;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Width of the millisecond prefix: fixed so that lexical order is numeric order.
const MILLIS_WIDTH: usize = 15;

/// Writes Bundle files into one directory.
#[derive(Debug)]
pub struct DirectoryOutput {
    names: SeqNamer,
}

impl DirectoryOutput {
    /// Create the directory (0700) if needed and find where naming continues.
    pub fn new(dir: &Path) -> Result<DirectoryOutput, DeliverError> {
        Ok(DirectoryOutput {
            names: SeqNamer::open(dir)?,
        })
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.names.dir
    }

    /// Write one Bundle durably; returns the file's path.
    pub async fn write(&mut self, bundle_id: &str, json: String) -> Result<PathBuf, DeliverError> {
        let name = self.names.next_name(bundle_id);
        let dir = self.names.dir.clone();
        blocking(&dir.clone(), move || {
            write_atomic(&dir, &name, json.as_bytes())
        })
        .await
    }
}

/// Run blocking file I/O off the async worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, DeliverError> + Send + 'static,
) -> Result<T, DeliverError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(DeliverError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Hands out `<millis>-<id>.json` names that never repeat and sort in the order given.
#[derive(Debug)]
pub(crate) struct SeqNamer {
    dir: PathBuf,
    last: u64,
}

impl SeqNamer {
    /// Create `dir` (0700) if missing, remove stale temporaries of a crashed write, and
    /// continue after the largest existing prefix.
    pub(crate) fn open(dir: &Path) -> Result<SeqNamer, DeliverError> {
        let io = |source| DeliverError::Io {
            path: dir.to_path_buf(),
            source,
        };
        crate::private::create_dir(dir).map_err(io)?;
        let mut last = 0;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write that crashed before its rename: its Bundle was never acknowledged
                // and will be written again under a new name.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Some(n) = name
                .split_once('-')
                .and_then(|(prefix, _)| prefix.parse::<u64>().ok())
            {
                last = last.max(n);
            }
        }
        Ok(SeqNamer {
            dir: dir.to_path_buf(),
            last,
        })
    }

    /// The next file name for `id`.
    pub(crate) fn next_name(&mut self, id: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        // Two Bundles in the same millisecond, or a clock stepped back, must still sort in order.
        self.last = now.max(self.last.saturating_add(1));
        format!("{:0width$}-{id}.json", self.last, width = MILLIS_WIDTH)
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Write `bytes` to `dir/name` so that the file is either absent or complete and durable:
/// hidden tmp file (0600) → fsync → rename → fsync the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, DeliverError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let on = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DeliverError::Io { path: p, source }
    };
    crate::private::write_synced(&tmp, bytes).map_err(on(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(on(&path))?;
    crate::private::sync_dir(dir).map_err(on(dir))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn directory_files_are_complete_private_and_in_delivery_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out/bundles");
        let mut out = DirectoryOutput::new(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let mut written = Vec::new();
        // Ids in descending order: the names must still sort by write order.
        for (i, id) in ["c", "b", "a"].iter().enumerate() {
            let p = out.write(id, format!("{{\"n\":{i}}}")).await.unwrap();
            assert_eq!(mode(&p), 0o600);
            written.push(p);
        }
        let mut listed: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        listed.sort();
        assert_eq!(
            listed, written,
            "no temporaries left, lexical order = write order"
        );
        for (i, p) in listed.iter().enumerate() {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(
                name.ends_with(&format!("-{}.json", ["c", "b", "a"][i])),
                "{name}"
            );
            assert_eq!(
                std::fs::read_to_string(p).unwrap(),
                format!("{{\"n\":{i}}}")
            );
        }
    }

    #[tokio::test]
    async fn directory_names_do_not_repeat_after_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // A name from the future (clock stepped back since) and a crashed temporary.
        let future = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 86_400_000;
        let old = format!("{future:015}-old.json");
        std::fs::write(dir.join(&old), "{}").unwrap();
        std::fs::write(dir.join(".000000000000001-x.json.tmp"), "partial").unwrap();
        let mut out = DirectoryOutput::new(dir).unwrap();
        let p = out.write("same", "{}".into()).await.unwrap();
        let mut again = DirectoryOutput::new(dir).unwrap();
        let q = again.write("same", "{}".into()).await.unwrap();
        assert_ne!(p, q);
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], old);
        assert!(names[1] < names[2]);
        assert!(
            names[1].starts_with(&format!("{:015}-", future + 1)),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn directory_write_error_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("gone");
        let mut out = DirectoryOutput::new(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        let err = out.write("x", "{}".into()).await.unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
