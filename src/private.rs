//! Files and directories only the agent's user may open. Read positions, the spool, dead
//! letters and the directory output all hold audit data about patients, so each is created
//! 0700 (directories) or 0600 (files) by the call that creates it, never chmod'ed later:
//! there is no moment in which another user could open it. Every stage that writes state
//! goes through here, so the modes live in one place.
//!
//! Errors are plain `io::Error`s; callers add the path and operation in their own error type.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every directory the agent creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the agent creates.
pub const FILE_MODE: u32 = 0o600;

/// Create `path` and its missing parents, each 0700; an existing directory is left as it is.
pub fn create_dir(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Options that open for writing and create files 0600; add `create`, `create_new`,
/// `truncate` or `append` as the caller needs.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).mode(FILE_MODE);
    o
}

/// Create or truncate `path` (0600) and write `bytes`, without fsync (for snapshots that may
/// be lost in a crash).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    options()
        .create(true)
        .truncate(true)
        .open(path)?
        .write_all(bytes)
}

/// Create or truncate `path` (0600), write `bytes` and fsync the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = options().create(true).truncate(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replace `dest` atomically: write `bytes` to `tmp` (0600, fsync), rename it over `dest`
/// and fsync `dest`'s directory, so after a crash `dest` holds either the old or the new
/// bytes, whole. `tmp` must be in the same directory as `dest`.
pub fn replace(tmp: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    write_synced(tmp, bytes)?;
    std::fs::rename(tmp, dest)?;
    sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// fsync a directory, making the names created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn everything_created_is_private_from_the_start() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        create_dir(&dir).unwrap();

        let f = dir.join("f");
        write(&f, b"one").unwrap();
        assert_eq!(mode(&f), 0o600);
        write_synced(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");

        let dest = dir.join("state");
        replace(&dir.join("state.tmp"), &dest, b"new").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(mode(&dest), 0o600);
        assert!(!dir.join("state.tmp").exists());

        let g = options().create_new(true).open(dir.join("g")).unwrap();
        drop(g);
        assert_eq!(mode(&dir.join("g")), 0o600);
    }
}
