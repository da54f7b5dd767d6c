//! A loopback TCP proxy whose link can be cut and restored (included by fault tests).
#![allow(dead_code)]

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

struct State {
    target: SocketAddr,
    open: AtomicBool,
    /// Swallow everything on existing connections (a black hole: no FIN, no RST).
    frozen: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// Forwards every connection made to `addr()` to the target, until cut.
pub(crate) struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, state: Arc<State>) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.frozen.load(Ordering::Acquire) {
            continue; // read and dropped: the other side hears nothing
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Proxy {
    pub(crate) fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            target,
            open: AtomicBool::new(true),
            frozen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if !s.open.load(Ordering::Acquire) {
                    // Cut: refuse by closing at once.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(s.target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let mut conns = s.conns.lock();
                conns.push(client.try_clone().unwrap());
                conns.push(server.try_clone().unwrap());
                drop(conns);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let mut pumps = s.pumps.lock();
                let (st1, st2) = (s.clone(), s.clone());
                pumps.push(std::thread::spawn(move || pump(client, server, st1)));
                pumps.push(std::thread::spawn(move || pump(s2, c2, st2)));
            }
        });
        Proxy {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks every forwarded connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.state.open.store(false, Ordering::Release);
        for c in self.state.conns.lock().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Accepts and forwards connections again.
    pub(crate) fn restore(&self) {
        self.state.open.store(true, Ordering::Release);
    }

    /// Turns existing connections into black holes: still open, nothing gets through. New
    /// connections are refused until `thaw`.
    pub(crate) fn freeze(&self) {
        self.state.open.store(false, Ordering::Release);
        self.state.frozen.store(true, Ordering::Release);
    }

    /// Lets traffic through again; connections frozen before stay useless to their ends, which
    /// have given up on them by then.
    pub(crate) fn thaw(&self) {
        self.state.frozen.store(false, Ordering::Release);
        self.state.open.store(true, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.cut();
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for p in self.state.pumps.lock().drain(..) {
            let _ = p.join();
        }
    }
}
