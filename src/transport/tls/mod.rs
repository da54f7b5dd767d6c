//! TLS with mutual authentication, through gRPC's OpenSSL support.
//!
//! Every node holds a certificate signed by one cluster CA whose subject alternative name
//! (a DNS name) is the node's id. Both ends of a connection verify the other's chain against
//! that CA. On top of the chain:
//! - a client names the neighbour it dials as the TLS target, so the server must present a
//!   certificate for the neighbour's id, whatever address it was reached at;
//! - a server checks that the id a client claims (the `gossip-node-id` header, or the first
//!   frame's sender) is among the names of the client's certificate, and refuses the stream
//!   with `PERMISSION_DENIED` otherwise.
//!
//! So with TLS on, node ids must be valid DNS names (letters, digits, `-` and `.`).
//!
//! `CertificateAuthority` (feature `certs`) makes such a CA and node certificates (it is what
//! `gossip certs` runs); any other CA works as long as each node's certificate carries its id
//! as a DNS subject alternative name and may be used for both server and client
//! authentication.

use std::fmt;
use std::path::Path;

use grpcio::{
    CertificateRequestType, ChannelCredentials, ChannelCredentialsBuilder, RpcContext,
    ServerCredentials, ServerCredentialsBuilder,
};

use crate::error::Error;

#[cfg(feature = "certs")]
mod authority;
#[cfg(feature = "certs")]
pub use authority::{CertificateAuthority, IssuedCertificate};

/// The auth-context property under which gRPC lists a peer certificate's SAN entries.
const SAN_PROPERTY: &str = "x509_subject_alternative_name";

/// A node's TLS material, all PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificate(s) every peer's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain (its SAN is the node's id).
    pub cert_pem: Vec<u8>,
    /// This node's private key.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsConfig {
    // The key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsConfig {
    /// Reads the three PEM files; an error names the field (`tls.ca`, `tls.cert`, `tls.key`)
    /// whose file cannot be read or is not PEM.
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, Error> {
        let read = |field: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| Error::Config {
                field,
                reason: format!("{}: {e}", path.display()),
            })
        };
        let tls = TlsConfig {
            ca_pem: read("tls.ca", ca.as_ref())?,
            cert_pem: read("tls.cert", cert.as_ref())?,
            key_pem: read("tls.key", key.as_ref())?,
        };
        tls.validate()?;
        Ok(tls)
    }

    /// Checks that each part looks like PEM. (gRPC parses it only when a connection is made,
    /// and would then fail every handshake with little to say why.)
    pub fn validate(&self) -> Result<(), Error> {
        for (field, pem) in [
            ("tls.ca", &self.ca_pem),
            ("tls.cert", &self.cert_pem),
            ("tls.key", &self.key_pem),
        ] {
            let text = std::str::from_utf8(pem).map_err(|_| Error::Config {
                field,
                reason: "is not PEM text".into(),
            })?;
            if text.contains('\0') || !text.contains("-----BEGIN ") {
                return Err(Error::Config {
                    field,
                    reason: "is not PEM (no -----BEGIN line)".into(),
                });
            }
        }
        Ok(())
    }

    /// Checks the material against the node it is for, so that a mistake fails at start rather
    /// than in every handshake: the certificate names `id` (a DNS subject alternative name), is
    /// signed by a CA of `ca_pem` (directly or through intermediates in `cert_pem`), is within
    /// its validity period, and `key_pem` is its key. Errors name the field (`tls.cert`,
    /// `tls.key`, `tls.ca`) and say what is wrong.
    pub fn check_for(&self, id: &str) -> Result<(), Error> {
        use x509_parser::pem::Pem;
        self.validate()?;
        let bad = |field: &'static str, reason: String| Error::Config { field, reason };
        let parse_all = |field: &'static str, pem: &[u8]| -> Result<Vec<Pem>, Error> {
            let blocks: Result<Vec<Pem>, _> = Pem::iter_from_buffer(pem).collect();
            let blocks = blocks.map_err(|e| bad(field, format!("unreadable PEM: {e}")))?;
            Ok(blocks
                .into_iter()
                .filter(|p| p.label == "CERTIFICATE")
                .collect())
        };
        let chain_pems = parse_all("tls.cert", &self.cert_pem)?;
        let ca_pems = parse_all("tls.ca", &self.ca_pem)?;
        fn decode<'p>(
            field: &'static str,
            pem: &'p Pem,
        ) -> Result<x509_parser::certificate::X509Certificate<'p>, Error> {
            pem.parse_x509().map_err(|e| Error::Config {
                field,
                reason: format!("not an X.509 certificate: {e}"),
            })
        }
        let chain = chain_pems
            .iter()
            .map(|p| decode("tls.cert", p))
            .collect::<Result<Vec<_>, _>>()?;
        let cas = ca_pems
            .iter()
            .map(|p| decode("tls.ca", p))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(leaf) = chain.first() else {
            return Err(bad("tls.cert", "holds no CERTIFICATE block".into()));
        };
        if cas.is_empty() {
            return Err(bad("tls.ca", "holds no CERTIFICATE block".into()));
        }
        let names: Vec<String> = match leaf.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                return Err(bad(
                    "tls.cert",
                    format!("bad subject alternative name: {e}"),
                ))
            }
        };
        if !certifies(&names, id) {
            return Err(bad(
                "tls.cert",
                format!(
                    "the certificate is for {} but this node's id is {id:?} (is it another \
                     node's certificate?)",
                    if names.is_empty() {
                        "no DNS name".to_owned()
                    } else {
                        names.join(",")
                    }
                ),
            ));
        }
        if !leaf.validity().is_valid() {
            return Err(bad(
                "tls.cert",
                format!(
                    "the certificate is valid from {} to {}, not now",
                    leaf.validity().not_before,
                    leaf.validity().not_after
                ),
            ));
        }
        // Up the chain: each certificate signed by a CA, or by the next one in `cert_pem`.
        let mut current = leaf;
        let mut chained = false;
        for _ in 0..chain.len() {
            if cas
                .iter()
                .any(|ca| current.verify_signature(Some(ca.public_key())).is_ok())
            {
                chained = true;
                break;
            }
            match chain[1..]
                .iter()
                .find(|c| current.verify_signature(Some(c.public_key())).is_ok())
            {
                Some(issuer) => current = issuer,
                None => break,
            }
        }
        if !chained {
            return Err(bad(
                "tls.cert",
                format!(
                    "the certificate (issued by {}) is not signed by the CA in tls.ca ({})",
                    leaf.issuer(),
                    cas.iter()
                        .map(|c| c.subject().to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
        match public_key_of(&self.key_pem) {
            Some(public) => {
                if public != leaf.public_key().subject_public_key.data.as_ref() {
                    return Err(bad(
                        "tls.key",
                        "the key does not belong to the certificate in tls.cert".into(),
                    ));
                }
            }
            // A key format this check cannot read (OpenSSL may still): left to the handshake.
            None => log::debug!("tls.key not checked against tls.cert: not a PKCS#8 key"),
        }
        Ok(())
    }

    /// Server side: present our certificate, and require a client certificate that chains to
    /// the CA.
    pub(crate) fn server_credentials(&self) -> ServerCredentials {
        ServerCredentialsBuilder::new()
            .root_cert(
                self.ca_pem.clone(),
                CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
            )
            .add_cert(self.cert_pem.clone(), self.key_pem.clone())
            .build()
    }

    /// Client side: verify the server against the CA, and present our certificate.
    pub(crate) fn channel_credentials(&self) -> ChannelCredentials {
        ChannelCredentialsBuilder::new()
            .root_cert(self.ca_pem.clone())
            .cert(self.cert_pem.clone(), self.key_pem.clone())
            .build()
    }
}

/// The public key (as a certificate's `subjectPublicKey` holds it) of the first PKCS#8
/// private key in `pem`: ECDSA P-256 or P-384, Ed25519 or RSA. `None` for anything else.
fn public_key_of(pem: &[u8]) -> Option<Vec<u8>> {
    use ring::signature::{self, KeyPair};
    let der = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .find(|p| p.label == "PRIVATE KEY")?
        .contents;
    let rng = ring::rand::SystemRandom::new();
    for alg in [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    ] {
        if let Ok(key) = signature::EcdsaKeyPair::from_pkcs8(alg, &der, &rng) {
            return Some(key.public_key().as_ref().to_vec());
        }
    }
    if let Ok(key) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
        return Some(key.public_key().as_ref().to_vec());
    }
    signature::RsaKeyPair::from_pkcs8(&der)
        .ok()
        .map(|key| key.public_key().as_ref().to_vec())
}

/// The names (SAN entries) of the verified certificate a client presented on this call, or
/// `None` on a plaintext call.
pub(crate) fn peer_names(ctx: &RpcContext<'_>) -> Option<Vec<String>> {
    let auth = ctx.auth_context()?;
    if !auth.peer_is_authenticated() {
        return None;
    }
    Some(
        auth.into_iter()
            .filter(|p| p.name() == SAN_PROPERTY)
            .filter_map(|p| p.value_str().ok().map(str::to_owned))
            .collect(),
    )
}

/// Whether a peer whose certificate carries `names` may act as `claimed`.
pub(crate) fn certifies(names: &[String], claimed: &str) -> bool {
    names.iter().any(|n| n == claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field_that_is_not_pem() {
        let good = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
        let tls = TlsConfig {
            ca_pem: good.clone(),
            cert_pem: good.clone(),
            key_pem: b"not a key".to_vec(),
        };
        match tls.validate() {
            Err(Error::Config { field, .. }) => assert_eq!(field, "tls.key"),
            other => panic!("{other:?}"),
        }
        let tls = TlsConfig {
            ca_pem: b"-----BEGIN \0".to_vec(),
            cert_pem: good.clone(),
            key_pem: good,
        };
        assert!(matches!(
            tls.validate(),
            Err(Error::Config {
                field: "tls.ca",
                ..
            })
        ));
    }

    #[test]
    fn missing_files_are_named() {
        let err = TlsConfig::from_files("/nonexistent/ca.pem", "/x", "/y").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config {
                    field: "tls.ca",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let tls = TlsConfig {
            ca_pem: vec![],
            cert_pem: vec![],
            key_pem: b"SECRET".to_vec(),
        };
        assert!(!format!("{tls:?}").contains("SECRET"));
    }

    #[cfg(feature = "certs")]
    #[test]
    fn a_ca_issues_valid_pem_and_can_be_reloaded() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let tls = ca.node_config("node-1").unwrap();
        tls.validate().unwrap();
        assert!(String::from_utf8(tls.key_pem)
            .unwrap()
            .contains("PRIVATE KEY"));
        let again = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        again.issue("node-2").unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem("junk", &ca.key_pem()),
            Err(Error::Config {
                field: "tls.ca",
                ..
            })
        ));
    }

    #[test]
    fn a_claimed_id_must_be_one_of_the_names() {
        let names = vec!["a".to_owned(), "a.example".to_owned()];
        assert!(certifies(&names, "a"));
        assert!(!certifies(&names, "b"));
        assert!(!certifies(&[], "a"));
    }

    #[cfg(feature = "certs")]
    #[test]
    fn material_is_checked_against_the_node_at_start() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let n = ca.node_config("n").unwrap();
        n.check_for("n").unwrap();
        let field_and_reason = |r: Result<(), Error>| match r {
            Err(Error::Config { field, reason }) => (field, reason),
            other => panic!("{other:?}"),
        };

        // Another node's certificate.
        let (field, reason) = field_and_reason(n.check_for("m"));
        assert_eq!(field, "tls.cert");
        assert!(
            reason.contains("for n") && reason.contains("\"m\""),
            "{reason}"
        );

        // A key that is not the certificate's.
        let other = ca.node_config("m").unwrap();
        let swapped = TlsConfig {
            key_pem: other.key_pem.clone(),
            ..n.clone()
        };
        let (field, reason) = field_and_reason(swapped.check_for("n"));
        assert_eq!(field, "tls.key");
        assert!(reason.contains("does not belong"), "{reason}");

        // A certificate from another CA than the one configured.
        let rogue = CertificateAuthority::generate("rogue CA").unwrap();
        let foreign = TlsConfig {
            ca_pem: n.ca_pem.clone(),
            ..rogue.node_config("n").unwrap()
        };
        let (field, reason) = field_and_reason(foreign.check_for("n"));
        assert_eq!(field, "tls.cert");
        assert!(reason.contains("not signed by the CA"), "{reason}");
    }
}
