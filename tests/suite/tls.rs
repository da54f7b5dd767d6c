//! TLS with mutual authentication between real nodes: a peer whose certificate chains to the
//! cluster CA and names its id is served; a peer with a certificate from another CA, a peer
//! claiming an id its certificate does not carry, and a plaintext peer are refused, each with a
//! log line saying why, while the node goes on serving its good peers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use grpc_gossip::transport::tls::{CertificateAuthority, TlsConfig};
use grpc_gossip::{Error, Message, NeighborInfo, Node, Outcome, StreamFactory, TransportConfig};
use parking_lot::Mutex;

/// Log records of this test process, so that the test can check what an operator would see.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            LOGS.lock()
                .push(format!("{} {}: {}", r.level(), r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).expect("logger set once");
        log::set_max_level(log::LevelFilter::Info);
        // The C core's own lines (TLS handshake failures) go to `log` too.
        grpcio::redirect_log();
    });
}

/// Waits until a captured log line contains every one of `parts`.
fn wait_for_log(parts: &[&str]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(line) = LOGS
            .lock()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
        {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?}; lines: {:#?}",
            LOGS.lock()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tls_factory(tls: Option<TlsConfig>) -> Arc<StreamFactory> {
    StreamFactory::new(TransportConfig {
        tls,
        ..TransportConfig::default()
    })
}

/// A node named `id` whose factory holds `tls`.
fn node(id: &str, tls: Option<TlsConfig>) -> Node {
    let mut c = config(id);
    c.connect_timeout = Duration::from_secs(3);
    start_with(c, &tls_factory(tls))
}

/// A gRPC channel to `addr` that presents `tls` and expects the server to be `server`: a client
/// that is not one of our nodes, so nothing checks its material before it dials.
fn raw_client(tls: &TlsConfig, server: &str, addr: std::net::SocketAddr) -> grpcio::Channel {
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let credentials = grpcio::ChannelCredentialsBuilder::new()
        .root_cert(tls.ca_pem.clone())
        .cert(tls.cert_pem.clone(), tls.key_pem.clone())
        .build();
    grpcio::ChannelBuilder::new(env)
        .set_credentials(credentials)
        .override_ssl_target(server)
        .connect(&addr.to_string())
}

fn dial(from: &Node, to: &Node) -> Result<(), Error> {
    from.connect_to_neighbor(NeighborInfo::new(
        to.id().as_str(),
        to.local_addr().to_string(),
    ))
}

/// Sends one message and waits for its completion.
fn send_and_complete(from: &Node, to: &Node, hash: &str) -> Outcome {
    let completions = from.completions();
    from.send_message(
        to.id().as_str(),
        Message::new(hash, Bytes::from_static(b"hi")),
    )
    .expect("send");
    let c = completions.recv_timeout(PATIENCE).expect("a completion");
    assert_eq!(c.key.hash, hash);
    c.outcome
}

fn assert_delivered(to: &Node, from: &str, hash: &str) {
    let d = to.deliveries().recv_timeout(PATIENCE).expect("a delivery");
    assert_eq!((d.from.as_str(), d.hash.as_str()), (from, hash));
}

#[test]
fn mutual_tls_admits_only_certified_peers() {
    capture_logs();
    let ca = CertificateAuthority::generate("test cluster CA").unwrap();
    let server = node("server", Some(ca.node_config("server").unwrap()));
    let good = node("good", Some(ca.node_config("good").unwrap()));
    let server_id = server.id().as_str().to_owned();

    // A trusted peer connects, both ways, and its messages are delivered and ACKed.
    dial(&good, &server).expect("a certified peer connects");
    dial(&server, &good).expect("and is dialled back");
    assert!(matches!(
        send_and_complete(&good, &server, "good-1"),
        Outcome::Acked { .. }
    ));
    assert_delivered(&server, "good", "good-1");
    assert!(matches!(
        send_and_complete(&server, &good, "server-1"),
        Outcome::Acked { .. }
    ));
    assert_delivered(&good, "server", "server-1");

    // A certificate from another CA (the outsider knows our CA's certificate, which is no
    // secret, so it does verify the server): the server refuses the handshake and logs it,
    // and the dial fails with an error that points at TLS.
    let rogue = CertificateAuthority::generate("rogue CA")
        .unwrap()
        .node_config("outsider")
        .unwrap();
    let outsider_tls = TlsConfig {
        ca_pem: ca.cert_pem().into_bytes(),
        ..rogue
    };
    // Our own node refuses to start with it, naming the problem...
    let refused = Node::builder(config("outsider"))
        .factory(tls_factory(Some(outsider_tls.clone())))
        .start()
        .expect_err("a certificate from another CA is refused at start");
    assert!(
        matches!(&refused, Error::Config { field: "tls.cert", reason } if reason.contains("not signed by the CA")),
        "{refused}"
    );
    // ...and a client that is not ours does not get through.
    let outsider = raw_client(&outsider_tls, "server", server.local_addr());
    assert!(
        !futures::executor::block_on(outsider.wait_for_connected(Duration::from_secs(3))),
        "an untrusted peer must not connect"
    );
    wait_for_log(&["Handshake failed", "certificate verify failed"]);
    drop(outsider);

    // A certificate from the right CA, but for another name than the id it claims: our node
    // refuses to start with it, and the server refuses the streams of a client that does not
    // check (PERMISSION_DENIED), saying so.
    LOGS.lock().clear();
    let mallory_tls = ca.node_config("mallory").unwrap();
    let refused = Node::builder(config("good"))
        .factory(tls_factory(Some(mallory_tls.clone())))
        .start()
        .expect_err("another node's certificate is refused at start");
    assert!(
        matches!(&refused, Error::Config { field: "tls.cert", reason } if reason.contains("mallory") && reason.contains("\"good\"")),
        "{refused}"
    );
    let impostor = raw_client(&mallory_tls, "server", server.local_addr());
    let mut headers = grpcio::MetadataBuilder::new();
    headers.add_str("gossip-node-id", "good").unwrap();
    let call = grpcio::CallOption::default().headers(headers.build());
    let client = grpc_gossip::proto::GossipClient::new(impostor);
    let (_sink, mut answers) = client.ack_stream_opt(call).expect("a call");
    let ended = futures::executor::block_on(futures::StreamExt::next(&mut answers));
    assert!(
        matches!(&ended, Some(Err(grpcio::Error::RpcFailure(s))) if s.code() == grpcio::RpcStatusCode::PERMISSION_DENIED),
        "{ended:?}"
    );
    let line = wait_for_log(&[&server_id, "claims to be \"good\"", "mallory"]);
    assert!(line.starts_with("WARN"), "{line}");

    // A plaintext peer cannot even complete a connection to a TLS server, which logs that
    // what came was no TLS.
    LOGS.lock().clear();
    let plain = node("plain", None);
    wait_for_log(&["PLAINTEXT"]);
    match dial(&plain, &server) {
        Err(Error::Connect { .. }) => {}
        other => panic!("a plaintext peer must not connect: {other:?}"),
    }
    wait_for_log(&["Handshake failed", "wrong version number"]);
    drop(plain);

    // Through all that, the good peer was served and still is.
    assert!(matches!(
        send_and_complete(&good, &server, "good-2"),
        Outcome::Acked { .. }
    ));
    assert_delivered(&server, "good", "good-2");
    let stats = server.stats();
    assert_eq!(
        stats.delivered, 2,
        "only the good peer's messages: {stats:?}"
    );
    assert_eq!(stats.neighbors_online, 1);
}

/// With TLS a neighbour's certificate is checked against its id, so one is not dialled by
/// address alone: refused at once, saying how to name it.
#[test]
fn with_tls_an_address_alone_is_refused() {
    let ca = CertificateAuthority::generate("test cluster CA").unwrap();
    let server = node("server", Some(ca.node_config("server").unwrap()));
    let client = node("client", Some(ca.node_config("client").unwrap()));
    let err = client
        .connect_to_address(&server.local_addr().to_string())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config { reason, .. } if reason.contains("ID=HOST:PORT")),
        "{err}"
    );
    assert!(client.neighbors().is_empty());
}

#[test]
fn malformed_tls_material_is_refused_at_start_naming_the_field() {
    let ca = CertificateAuthority::generate("test cluster CA").unwrap();
    let mut tls = ca.node_config("n").unwrap();
    tls.cert_pem = b"not a certificate".to_vec();
    let err = Node::builder(config("n"))
        .factory(tls_factory(Some(tls)))
        .start()
        .expect_err("refused");
    assert!(
        matches!(
            err,
            Error::Config {
                field: "tls.cert",
                ..
            }
        ),
        "{err}"
    );
}
