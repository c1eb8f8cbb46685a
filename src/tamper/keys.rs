//! The agent's Ed25519 signing key: created at first start, kept 0600 under
//! `<state_dir>/tamper/`, never logged or printed (only its public half is).
//!
//! * `key`: the 32-byte private seed, 64 hex digits and a line feed (0600).
//! * `keys/<fingerprint>.pub`: the public key of every key this agent has used, 64 hex
//!   digits; `verify` trusts these by default, and they stay after a rotation so old seals
//!   still verify.
//!
//! The fingerprint is the lower-case hex SHA-256 of the raw 32-byte public key.

use super::merkle::hex;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};

/// Private key file under `<state_dir>/tamper/`.
pub const KEY_FILE: &str = "key";
/// Directory of public keys under `<state_dir>/tamper/`.
pub const PUBKEY_DIR: &str = "keys";

/// Key file problems.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read or written.
    #[error("tamper key: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not hold a key.
    #[error("tamper key: {} does not hold a key ({reason})", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The fingerprint of a public key: hex SHA-256 of its 32 bytes.
pub fn fingerprint(public: &[u8; 32]) -> String {
    hex(&Sha256::digest(public))
}

/// The agent's signing key.
pub struct AgentKey {
    signing: SigningKey,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        write!(f, "AgentKey({})", self.fingerprint())
    }
}

impl AgentKey {
    /// The key under `state_dir`, created (and its public key recorded) if there is none.
    pub fn load_or_create(state_dir: &Path) -> Result<AgentKey, KeyError> {
        let dir = state_dir.join(super::TAMPER_DIR);
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            create(&dir, &path)?;
        }
        let key = AgentKey::load(&path)?;
        key.record_public(state_dir)?;
        Ok(key)
    }

    /// Read a private key file.
    pub fn load(path: &Path) -> Result<AgentKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
        let seed = parse_32(text.trim()).ok_or_else(|| KeyError::Format {
            path: path.to_path_buf(),
            reason: "expected 64 hex digits".into(),
        })?;
        Ok(AgentKey {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// Replace the key with a new one; the old public key stays in `keys/`. Returns the new
    /// key (the running agent uses it from its next start or reload).
    pub fn rotate(state_dir: &Path) -> Result<AgentKey, KeyError> {
        let dir = state_dir.join(super::TAMPER_DIR);
        let path = dir.join(KEY_FILE);
        if path.exists() {
            // Make sure the old public key is on record before its private half goes.
            AgentKey::load(&path)?.record_public(state_dir)?;
            let old = dir.join("key.old");
            std::fs::rename(&path, &old).map_err(io_err("rename", &path))?;
            create(&dir, &path)?;
            std::fs::remove_file(&old).map_err(io_err("remove", &old))?;
        } else {
            create(&dir, &path)?;
        }
        let key = AgentKey::load(&path)?;
        key.record_public(state_dir)?;
        Ok(key)
    }

    /// The raw public key.
    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Its fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public())
    }

    /// Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    fn record_public(&self, state_dir: &Path) -> Result<(), KeyError> {
        let dir = state_dir.join(super::TAMPER_DIR).join(PUBKEY_DIR);
        crate::private::create_dir(&dir).map_err(io_err("create directory", &dir))?;
        let path = dir.join(format!("{}.pub", self.fingerprint()));
        if !path.exists() {
            let tmp = dir.join(".pub.tmp");
            crate::private::replace(&tmp, &path, format!("{}\n", hex(&self.public())).as_bytes())
                .map_err(io_err("write", &path))?;
        }
        Ok(())
    }
}

/// Write a fresh key to `path` (0600), never over an existing one: two processes racing
/// both end up with the one that was linked first.
fn create(dir: &Path, path: &Path) -> Result<(), KeyError> {
    crate::private::create_dir(dir).map_err(io_err("create directory", dir))?;
    let mut seed = [0u8; 32];
    getrandom(&mut seed).map_err(io_err("get random bytes for", path))?;
    let tmp = dir.join(format!(".key.{}.tmp", std::process::id()));
    let mut text = hex(&seed);
    text.push('\n');
    seed.fill(0);
    let written = crate::private::write_synced(&tmp, text.as_bytes());
    // The seed leaves memory as soon as it is on disk.
    text.clear();
    written.map_err(io_err("write", &tmp))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create", path)(e)),
    }
    crate::private::sync_dir(dir).map_err(io_err("sync", dir))
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// 32 bytes from 64 hex digits or standard base64.
pub fn parse_32(s: &str) -> Option<[u8; 32]> {
    if let Some(h) = super::merkle::parse_hex(s) {
        return Some(h);
    }
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    b.try_into().ok()
}

/// A public key file (hex or base64, one line).
pub fn read_public_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    parse_32(text.trim()).ok_or_else(|| KeyError::Format {
        path: path.to_path_buf(),
        reason: "expected a 32-byte Ed25519 public key as 64 hex digits or base64".into(),
    })
}

/// Every public key recorded under `state_dir` (absent directory: none).
pub fn recorded_public_keys(state_dir: &Path) -> Result<Vec<[u8; 32]>, KeyError> {
    let dir = state_dir.join(super::TAMPER_DIR).join(PUBKEY_DIR);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let path = entry.map_err(io_err("list", &dir))?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            out.push(read_public_key(&path)?);
        }
    }
    out.sort();
    Ok(out)
}

/// Check an Ed25519 signature.
pub fn verify_signature(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    // Strict: no malleable or small-order encodings (RFC 8032 §5.1.7 checks plus those).
    key.verify_strict(message, &Signature::from_bytes(signature))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_private_0600_public_recorded_and_rotation_keeps_old_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let k = AgentKey::load_or_create(dir.path()).unwrap();
        let again = AgentKey::load_or_create(dir.path()).unwrap();
        assert_eq!(k.public(), again.public());
        let path = dir.path().join("tamper/key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            !format!("{k:?}").contains(&std::fs::read_to_string(&path).unwrap().trim().to_string())
        );
        let sig = k.sign(b"m");
        assert!(verify_signature(&k.public(), b"m", &sig));
        assert!(!verify_signature(&k.public(), b"n", &sig));
        let new = AgentKey::rotate(dir.path()).unwrap();
        assert_ne!(new.public(), k.public());
        let mut want = vec![k.public(), new.public()];
        want.sort();
        assert_eq!(recorded_public_keys(dir.path()).unwrap(), want);
        assert_eq!(fingerprint(&k.public()).len(), 64);
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 §7.1, TEST 1 (empty message).
        let seed =
            parse_32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
        let k = AgentKey {
            signing: SigningKey::from_bytes(&seed),
        };
        assert_eq!(
            hex(&k.public()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex(&k.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }
}
