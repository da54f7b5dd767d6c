//! [`MetricsServer`]: `/metrics`, `/healthz` and `/readyz` over HTTP (feature `metrics-server`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use prometheus::Registry;

use super::{prometheus_error, render, NodeCollector};
use crate::error::Error;
use crate::node::Node;

/// Answers whether the process is ready for traffic: `Err` says why not.
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send>;

/// An HTTP server on a thread of its own, stopped when dropped:
/// - `GET /metrics`: a registry's metrics in Prometheus' text format;
/// - `GET /healthz`: 200 `ok` while the process serves (liveness);
/// - `GET /readyz`: 200 `ready`, or 503 with the reason (readiness; for a node: listening,
///   and linked to at least one neighbour or none configured, see [`Node::readiness`]);
/// - 404 for any other path.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Serves `node`'s metrics and readiness on `addr` (port 0 picks one).
    pub fn for_node(addr: &str, node: Arc<Node>) -> Result<MetricsServer, Error> {
        let registry = Registry::new();
        registry
            .register(Box::new(NodeCollector::new(node.clone())?))
            .map_err(|e| prometheus_error("registering the node's metrics", e))?;
        MetricsServer::with_readiness(addr, registry, Box::new(move || node.readiness()))
    }

    /// Serves whatever `registry` gathers on `addr` (port 0 picks one); `/readyz` always
    /// answers ready.
    pub fn start(addr: &str, registry: Registry) -> Result<MetricsServer, Error> {
        MetricsServer::with_readiness(addr, registry, Box::new(|| Ok(())))
    }

    /// Serves `registry` on `addr`, with `/readyz` answered by `ready`.
    pub fn with_readiness(
        addr: &str,
        registry: Registry,
        ready: Readiness,
    ) -> Result<MetricsServer, Error> {
        let bind_err = |reason: String| Error::Bind {
            addr: addr.to_owned(),
            purpose: "the metrics server, `metrics_addr`",
            reason,
        };
        let server = tiny_http::Server::http(addr).map_err(|e| bind_err(e.to_string()))?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| bind_err("not an IP address".into()))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, stop) = (server.clone(), stop.clone());
            std::thread::Builder::new()
                .name("gossip-metrics".into())
                .spawn(move || serve(&server, &registry, &*ready, &stop))
                .map_err(Error::Io)?
        };
        info!("metrics on http://{local}/metrics");
        Ok(MetricsServer {
            addr: local,
            stop,
            server,
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    server: &tiny_http::Server,
    registry: &Registry,
    ready: &(dyn Fn() -> Result<(), String> + Send),
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let request = match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                warn!("metrics server: {e}");
                return;
            }
        };
        let path = request.url().split('?').next().unwrap_or("");
        let response = match (request.method(), path) {
            (tiny_http::Method::Get, "/metrics") => match render(registry) {
                Ok(text) => {
                    let content_type = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4; charset=utf-8"[..],
                    )
                    .ok();
                    let mut r = tiny_http::Response::from_string(text);
                    if let Some(h) = content_type {
                        r = r.with_header(h);
                    }
                    r
                }
                Err(e) => tiny_http::Response::from_string(e.to_string()).with_status_code(500),
            },
            (tiny_http::Method::Get, "/healthz") => tiny_http::Response::from_string("ok\n"),
            (tiny_http::Method::Get, "/readyz") => match ready() {
                Ok(()) => tiny_http::Response::from_string("ready\n"),
                Err(why) => tiny_http::Response::from_string(format!("not ready: {why}\n"))
                    .with_status_code(503),
            },
            _ => tiny_http::Response::from_string(
                "not found; try GET /metrics, /healthz or /readyz\n",
            )
            .with_status_code(404),
        };
        if let Err(e) = request.respond(response) {
            warn!("metrics server: answering a scrape: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_answers_metrics_and_404() {
        let registry = Registry::new();
        let collector = NodeCollector::from_source("n1", super::super::tests::sample).unwrap();
        registry.register(Box::new(collector)).unwrap();
        let server = MetricsServer::start("127.0.0.1:0", registry).unwrap();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(ok.contains("gossip_slots{node=\"n1\"} 200"), "{ok}");
        let missing = get("/");
        assert!(missing.contains(" 404 "), "{missing}");
    }
}
