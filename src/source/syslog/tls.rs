//! TLS server configuration of a `tls://` listener from `[sources.tls]`: certificate chain and
//! key from PEM files, and optional client-certificate verification against `client_ca_file`.
//! Uses rustls with the aws-lc-rs provider, the one reqwest already links.

use crate::config::ListenTlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

/// A problem with the TLS files; the message names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{key} {path:?}: {message}")]
    File {
        /// The config key (`cert_file`, …).
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination (e.g. key does not match the certificate).
    #[error("{0}")]
    Config(String),
}

fn file_error(key: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Build the acceptor for a `tls://` listener.
pub fn acceptor(cfg: &ListenTlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs("cert_file", &cfg.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| file_error("key_file", &cfg.key_file, e))?;
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs("client_ca_file", ca_path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("client_ca_file", ca_path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error("client_ca_file", ca_path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("cert_file/key_file: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
