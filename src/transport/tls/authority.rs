//! [`CertificateAuthority`]: a cluster CA that issues node certificates (feature `certs`; it is
//! what `gossip certs` and `gossip bench --tls` use).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use std::fmt;

use super::TlsConfig;
use crate::error::Error;

/// A cluster CA that issues node certificates: the certificate's DNS subject alternative name
/// is the node id, and it serves for both server and client authentication.
pub struct CertificateAuthority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

/// A node certificate and its private key, PEM-encoded.
pub struct IssuedCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn tls_error(field: &'static str, e: impl fmt::Display) -> Error {
    Error::Config {
        field,
        reason: e.to_string(),
    }
}

impl CertificateAuthority {
    /// A new CA with a fresh key; `name` becomes its common name.
    pub fn generate(name: &str) -> Result<CertificateAuthority, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(|e| tls_error("tls.ca", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_error("tls.ca", e))?;
        Ok(CertificateAuthority { cert, key })
    }

    /// An existing CA, from its certificate and private key (PEM), to issue more node
    /// certificates that chain to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| tls_error("tls.ca_key", e))?;
        let params =
            CertificateParams::from_ca_cert_pem(cert_pem).map_err(|e| tls_error("tls.ca", e))?;
        // Re-signing the same subject with the same key gives an issuer identical to the
        // original for every purpose of chain verification.
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_error("tls.ca", e))?;
        Ok(CertificateAuthority { cert, key })
    }

    /// The CA certificate (what every node is configured with as `tls.ca`).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key (keep it off the nodes).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for node `id` (which must be a DNS name), with a fresh key.
    pub fn issue(&self, id: &str) -> Result<IssuedCertificate, Error> {
        let mut params =
            CertificateParams::new(vec![id.to_owned()]).map_err(|e| tls_error("id", e))?;
        params.distinguished_name.push(DnType::CommonName, id);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(|e| tls_error("tls.key", e))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| tls_error("tls.cert", e))?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node's whole [`TlsConfig`]: a new certificate for `id` and this CA as the trust root.
    pub fn node_config(&self, id: &str) -> Result<TlsConfig, Error> {
        let issued = self.issue(id)?;
        Ok(TlsConfig {
            ca_pem: self.cert_pem().into_bytes(),
            cert_pem: issued.cert_pem.into_bytes(),
            key_pem: issued.key_pem.into_bytes(),
        })
    }
}
