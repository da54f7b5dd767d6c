//! The plain-TCP baseline: the seed workload over blocking loopback TCP with length-prefixed
//! frames and one ACK frame back per message. No gRPC, no HTTP/2, no protobuf: a measure of
//! what the wire and the kernel allow on this machine.
//!
//! Frame: `u32 hash_len | u32 payload_len | hash | payload` (big endian). ACK: `u32 hash_len |
//! hash`. One connection per directed pair; the receiver answers each frame with its ACK.
//!
// The link resolves only where the feature builds the function.
#![cfg_attr(
    feature = "tls-baseline",
    doc = "With the feature `tls-baseline`, [`TcpCluster::start_tls`] runs the same"
)]
#![cfg_attr(
    not(feature = "tls-baseline"),
    doc = "With the feature `tls-baseline`, `TcpCluster::start_tls` runs the same"
)]
//! over mutual TLS 1.3 with OpenSSL (the library gRPC's C core uses here), AES-256-GCM: the
//! measure of what encryption itself costs, for `gossip bench --baseline tcp --tls`.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

use super::{RoundReport, Workload};

/// One directed connection: plain, or TLS over it.
enum Conn {
    Plain(TcpStream),
    #[cfg(feature = "tls-baseline")]
    Tls(Mutex<openssl::ssl::SslStream<TcpStream>>),
}

impl Conn {
    fn shutdown(&self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown(Shutdown::Both),
            #[cfg(feature = "tls-baseline")]
            Conn::Tls(s) => s.lock().get_ref().shutdown(Shutdown::Both),
        };
    }
}

/// `n` TCP "nodes" in a full mesh on loopback.
pub struct TcpCluster {
    addrs: Vec<SocketAddr>,
    /// `links[i]` holds node i's connections to every other node, as (peer index, stream).
    links: Vec<Vec<(usize, Conn)>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    workload: Workload,
    payload: Vec<u8>,
}

impl std::fmt::Debug for TcpCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpCluster")
            .field("addrs", &self.addrs)
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

/// Answers each frame on `conn` with its ACK until the peer closes.
fn serve<S: Read + Write>(conn: S) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, conn);
    let mut header = [0u8; 8];
    let mut hash = Vec::new();
    let mut payload = Vec::new();
    loop {
        if let Err(e) = reader.read_exact(&mut header) {
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        let hash_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let payload_len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        hash.resize(hash_len, 0);
        reader.read_exact(&mut hash)?;
        payload.resize(payload_len, 0);
        reader.read_exact(&mut payload)?;
        let mut ack = Vec::with_capacity(4 + hash_len);
        ack.extend_from_slice(&(hash_len as u32).to_be_bytes());
        ack.extend_from_slice(&hash);
        reader.get_mut().write_all(&ack)?;
    }
}

/// How connections are set up: plain, or with TLS on both ends.
#[derive(Clone)]
enum Security {
    Plain,
    #[cfg(feature = "tls-baseline")]
    Tls(Arc<tls::Ends>),
}

impl TcpCluster {
    /// Starts `workload.nodes` listeners and connects them in a full mesh.
    pub fn start(workload: &Workload) -> io::Result<TcpCluster> {
        TcpCluster::start_with(workload, Security::Plain)
    }

    /// Like [`start`](TcpCluster::start), every connection over mutual TLS 1.3 (AES-256-GCM,
    /// OpenSSL) with `tls`'s certificate on both ends; it must name [`TLS_NAME`].
    #[cfg(feature = "tls-baseline")]
    pub fn start_tls(
        workload: &Workload,
        tls: &crate::transport::tls::TlsConfig,
    ) -> io::Result<TcpCluster> {
        TcpCluster::start_with(workload, Security::Tls(Arc::new(tls::Ends::new(tls)?)))
    }

    fn start_with(workload: &Workload, security: Security) -> io::Result<TcpCluster> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..workload.nodes {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            addrs.push(listener.local_addr()?);
            let stop = stop.clone();
            let accepted = accepted.clone();
            let security = security.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("tcp-accept".into())
                    .spawn(move || {
                        let mut servers = Vec::new();
                        for conn in listener.incoming() {
                            if stop.load(Ordering::Acquire) {
                                break;
                            }
                            let Ok(conn) = conn else { continue };
                            if let Ok(c) = conn.try_clone() {
                                accepted.lock().push(c);
                            }
                            let security = security.clone();
                            servers.push(std::thread::spawn(move || {
                                let _ = conn.set_nodelay(true);
                                let _ = match security {
                                    Security::Plain => serve(conn),
                                    #[cfg(feature = "tls-baseline")]
                                    Security::Tls(ends) => ends.accept(conn).and_then(serve),
                                };
                            }));
                        }
                        for s in servers {
                            let _ = s.join();
                        }
                    })?,
            );
        }
        let mut links = Vec::new();
        for (i, _) in addrs.iter().enumerate() {
            let mut mine = Vec::new();
            for (j, addr) in addrs.iter().enumerate() {
                if i != j {
                    let s = TcpStream::connect(addr)?;
                    s.set_nodelay(true)?;
                    let conn = match &security {
                        Security::Plain => Conn::Plain(s),
                        #[cfg(feature = "tls-baseline")]
                        Security::Tls(ends) => Conn::Tls(Mutex::new(ends.connect(s)?)),
                    };
                    mine.push((j, conn));
                }
            }
            links.push(mine);
        }
        Ok(TcpCluster {
            addrs,
            links,
            stop,
            threads,
            accepted,
            workload: workload.clone(),
            payload: vec![0x5a; workload.payload_bytes],
        })
    }

    /// Runs one round: per directed pair, write every frame, then read every ACK.
    pub fn run_round(&self, round: usize) -> RoundReport {
        let w = &self.workload;
        let start = Instant::now();
        let results: Vec<io::Result<usize>> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for (i, mine) in self.links.iter().enumerate() {
                for (j, conn) in mine {
                    let payload = &self.payload;
                    handles.push(s.spawn(move || -> io::Result<usize> {
                        let hashes: Vec<String> = (0..w.messages_per_peer)
                            .map(|k| format!("r{round}-{i}-{j}-{k}"))
                            .collect();
                        match conn {
                            Conn::Plain(stream) => exchange(&mut &*stream, &hashes, payload),
                            #[cfg(feature = "tls-baseline")]
                            Conn::Tls(stream) => exchange(&mut *stream.lock(), &hashes, payload),
                        }
                    }));
                }
            }
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("panicked")))
                })
                .collect()
        });
        let mut acked = 0;
        let mut problems = Vec::new();
        for r in results {
            match r {
                Ok(n) => acked += n,
                Err(e) => problems.push(format!("tcp pair failed: {e}")),
            }
        }
        RoundReport {
            elapsed: start.elapsed(),
            acked,
            expected: w.messages_per_round(),
            problems,
            ack_latencies: Vec::new(),
        }
    }
}

/// One pair's round on `stream`: every frame, then every ACK; how many ACKs matched.
fn exchange<S: Read + Write>(
    stream: &mut S,
    hashes: &[String],
    payload: &[u8],
) -> io::Result<usize> {
    let mut out = BufWriter::with_capacity(64 * 1024, &mut *stream);
    for h in hashes {
        out.write_all(&(h.len() as u32).to_be_bytes())?;
        out.write_all(&(payload.len() as u32).to_be_bytes())?;
        out.write_all(h.as_bytes())?;
        out.write_all(payload)?;
    }
    out.flush()?;
    drop(out);
    let mut input = BufReader::new(stream);
    let mut acked = 0;
    for h in hashes {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
        input.read_exact(&mut got)?;
        if got == h.as_bytes() {
            acked += 1;
        }
    }
    Ok(acked)
}

/// The name the TLS baseline's certificate must carry.
#[cfg(feature = "tls-baseline")]
pub const TLS_NAME: &str = "bench-tcp";

#[cfg(feature = "tls-baseline")]
mod tls {
    //! Both ends of the baseline's TLS: one certificate, trusted through its CA.

    use std::io;
    use std::net::TcpStream;

    use openssl::pkey::PKey;
    use openssl::ssl::{
        SslAcceptor, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion,
    };
    use openssl::x509::X509;

    use crate::transport::tls::TlsConfig;

    /// The suite gRPC's C core negotiates with OpenSSL between our nodes on this machine (see
    /// docs/performance.md); the baseline allows only it.
    const SUITE: &str = "TLS_AES_256_GCM_SHA384";

    pub(super) struct Ends {
        acceptor: SslAcceptor,
        connector: SslConnector,
    }

    fn tls_error(e: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("TLS baseline: {e}"))
    }

    impl Ends {
        pub(super) fn new(tls: &TlsConfig) -> io::Result<Ends> {
            let ca = X509::from_pem(&tls.ca_pem).map_err(tls_error)?;
            let cert = X509::from_pem(&tls.cert_pem).map_err(tls_error)?;
            let key = PKey::private_key_from_pem(&tls.key_pem).map_err(tls_error)?;
            let mut acceptor =
                SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).map_err(tls_error)?;
            acceptor.set_certificate(&cert).map_err(tls_error)?;
            acceptor.set_private_key(&key).map_err(tls_error)?;
            acceptor
                .cert_store_mut()
                .add_cert(ca.clone())
                .map_err(tls_error)?;
            acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            acceptor.set_ciphersuites(SUITE).map_err(tls_error)?;
            let mut connector =
                SslConnector::builder(SslMethod::tls_client()).map_err(tls_error)?;
            connector.set_certificate(&cert).map_err(tls_error)?;
            connector.set_private_key(&key).map_err(tls_error)?;
            connector.cert_store_mut().add_cert(ca).map_err(tls_error)?;
            connector.set_ciphersuites(SUITE).map_err(tls_error)?;
            connector
                .set_min_proto_version(Some(SslVersion::TLS1_3))
                .map_err(tls_error)?;
            Ok(Ends {
                acceptor: acceptor.build(),
                connector: connector.build(),
            })
        }

        pub(super) fn accept(&self, conn: TcpStream) -> io::Result<SslStream<TcpStream>> {
            self.acceptor.accept(conn).map_err(tls_error)
        }

        pub(super) fn connect(&self, conn: TcpStream) -> io::Result<SslStream<TcpStream>> {
            self.connector
                .connect(super::TLS_NAME, conn)
                .map_err(tls_error)
        }
    }
}

impl Drop for TcpCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for mine in &self.links {
            for (_, conn) in mine {
                conn.shutdown();
            }
        }
        for s in self.accepted.lock().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake each acceptor so it sees the stop flag.
        for addr in &self.addrs {
            let _ = TcpStream::connect(addr);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Workload {
        Workload {
            nodes: 3,
            messages_per_peer: 4,
            payload_bytes: 100 * 1024,
            ..Workload::default()
        }
    }

    #[test]
    fn a_plain_round_is_acked_in_full() {
        let cluster = TcpCluster::start(&small()).unwrap();
        for round in 0..2 {
            let report = cluster.run_round(round);
            assert!(report.problems.is_empty(), "{:?}", report.problems);
            assert_eq!((report.acked, report.expected), (24, 24));
        }
    }

    #[cfg(all(feature = "tls-baseline", feature = "certs"))]
    #[test]
    fn a_tls_round_is_acked_in_full_and_a_stranger_is_refused() {
        use crate::transport::tls::CertificateAuthority;
        let ca = CertificateAuthority::generate("baseline test CA").unwrap();
        let tls = ca.node_config(TLS_NAME).unwrap();
        let cluster = TcpCluster::start_tls(&small(), &tls).unwrap();
        let report = cluster.run_round(0);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.acked, report.expected), (24, 24));
        // A client whose certificate another CA signed gets no session.
        let other = CertificateAuthority::generate("another CA").unwrap();
        let stranger = tls::Ends::new(&other.node_config(TLS_NAME).unwrap()).unwrap();
        let conn = TcpStream::connect(cluster.addrs[0]).unwrap();
        assert!(stranger.connect(conn).is_err());
    }
}
