//! `gossip certs`: a cluster CA and one certificate per node, for mutual TLS.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use grpc_gossip::transport::tls::CertificateAuthority;
use grpc_gossip::Error;

/// Arguments of `gossip certs`.
#[derive(clap::Args)]
pub(crate) struct CertsArgs {
    /// Directory to write into: ca.pem and ca.key (reused when present, so that more nodes
    /// can join later), then ID.pem and ID.key per node.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Node ids, comma-separated (each must be a DNS name: letters, digits, '-' and '.').
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<String>,
    /// Common name of a new CA.
    #[arg(long, default_value = "grpc-gossip cluster CA")]
    ca_name: String,
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

/// Writes `text` to `path`; private keys are readable by their owner only.
fn write(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| io_error(path, e))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

fn is_dns_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && id.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Makes (or reuses) the CA and issues a certificate per id.
pub(crate) fn run(args: CertsArgs) -> Result<ExitCode, Error> {
    if let Some(bad) = args.ids.iter().find(|id| !is_dns_name(id)) {
        return Err(Error::Config {
            field: "ids",
            reason: format!("{bad:?} is not a DNS name (letters, digits, '-' and '.')"),
        });
    }
    std::fs::create_dir_all(&args.out).map_err(|e| io_error(&args.out, e))?;
    let (ca_cert, ca_key) = (args.out.join("ca.pem"), args.out.join("ca.key"));
    let ca = if ca_cert.exists() && ca_key.exists() {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| io_error(p, e));
        let ca = CertificateAuthority::from_pem(&read(&ca_cert)?, &read(&ca_key)?)?;
        println!("reusing CA {}", ca_cert.display());
        ca
    } else {
        let ca = CertificateAuthority::generate(&args.ca_name)?;
        write(&ca_cert, &ca.cert_pem(), false)?;
        write(&ca_key, &ca.key_pem(), true)?;
        println!(
            "new CA {} (keep {} off the nodes)",
            ca_cert.display(),
            ca_key.display()
        );
        ca
    };
    for id in &args.ids {
        let issued = ca.issue(id)?;
        let (cert, key) = (
            args.out.join(format!("{id}.pem")),
            args.out.join(format!("{id}.key")),
        );
        write(&cert, &issued.cert_pem, false)?;
        write(&key, &issued.key_pem, true)?;
        println!("node {id}: {} {}", cert.display(), key.display());
    }
    println!(
        "run each node with: --tls-ca {} --tls-cert {}/ID.pem --tls-key {}/ID.key",
        ca_cert.display(),
        args.out.display(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_dns_names() {
        for good in ["n1", "node-2.cluster.local", "a"] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in ["", "-a", "a_b", "a..b", "a/b", "é"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
