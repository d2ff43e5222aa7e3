//! TLS settings, the same for every backend that speaks TLS, and [`Secret`], a value that
//! never shows in `Debug` output.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// A value that must never be printed (a password, a private key): `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself: hand it to the client crate, never to a log.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How a backend speaks TLS: which certificate authorities it trusts, and the client
/// certificate it presents, if any.
///
/// # Behavior
/// - [`TlsOptions::new`] trusts the system's root certificates and presents no client
///   certificate.
/// - [`ca`](Self::ca) / [`ca_file`](Self::ca_file) trust a private CA instead of the system's
///   roots.
/// - [`identity`](Self::identity) / [`identity_files`](Self::identity_files) present a client
///   certificate (mutual TLS); the private key never appears in `Debug` output.
///
/// Every backend's options take it the same way (`XOptions::tls(TlsOptions)`), and every URL
/// spells it the same way: `tls=true`, `ca_file=`, `cert_file=` + `key_file=`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Secret<Vec<u8>>)>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::InvalidConfig(format!("cannot read the TLS {what} file {}: {e}", path.display())))
}

impl TlsOptions {
    /// TLS trusting the system's root certificates, with no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts this CA certificate (PEM) instead of the system's roots.
    pub fn ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Like [`ca`](Self::ca), reading the PEM file at `path`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the file cannot be read.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        Ok(self.ca(read("CA", path.as_ref())?))
    }

    /// Presents this client certificate and private key (both PEM), for servers that require
    /// one.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), Secret::new(key_pem.into())));
        self
    }

    /// Like [`identity`](Self::identity), reading the two PEM files.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a file cannot be read.
    pub fn identity_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let cert = read("client certificate", cert.as_ref())?;
        let key = read("client key", key.as_ref())?;
        Ok(self.identity(cert, key))
    }

    /// The private CA (PEM), if one was set; `None` means the system's roots.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// The client certificate and key (PEM), if set.
    pub fn identity_pem(&self) -> Option<(&[u8], &[u8])> {
        self.identity.as_ref().map(|(c, k)| (c.as_slice(), k.expose().as_slice()))
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &if self.ca.is_some() { "private CA" } else { "system roots" })
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_secrets_never_show() {
        let t = TlsOptions::new().ca("CA PEM").identity("CERT PEM", "PRIVATE KEY PEM");
        let shown = format!("{t:?} {:?}", Secret::new("hunter2"));
        assert!(!shown.contains("PRIVATE") && !shown.contains("hunter2"), "{shown}");
        assert_eq!(t.identity_pem(), Some((&b"CERT PEM"[..], &b"PRIVATE KEY PEM"[..])));
        let e = TlsOptions::new().ca_file("/nonexistent/ca.pem").unwrap_err().to_string();
        assert!(e.contains("CA file /nonexistent/ca.pem"), "{e}");
    }
}
