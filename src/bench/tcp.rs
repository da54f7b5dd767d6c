//! The plain-TCP baseline: the seed workload over blocking loopback TCP with length-prefixed
//! frames and one ACK frame back per message. No gRPC, no HTTP/2, no protobuf: a measure of
//! what the wire and the kernel allow on this machine.
//!
//! Frame: `u32 hash_len | u32 payload_len | hash | payload` (big endian). ACK: `u32 hash_len |
//! hash`. One connection per directed pair; the receiver answers each frame with its ACK.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

use super::{RoundReport, Workload};

/// `n` TCP "nodes" in a full mesh on loopback.
pub struct TcpCluster {
    addrs: Vec<SocketAddr>,
    /// `links[i]` holds node i's connections to every other node, as (peer index, stream).
    links: Vec<Vec<(usize, TcpStream)>>,
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

fn serve(conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(256 * 1024, conn.try_clone()?);
    let mut writer = conn;
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
        writer.write_all(&ack)?;
    }
}

impl TcpCluster {
    /// Starts `workload.nodes` listeners and connects them in a full mesh.
    pub fn start(workload: &Workload) -> io::Result<TcpCluster> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..workload.nodes {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            addrs.push(listener.local_addr()?);
            let stop = stop.clone();
            let accepted = accepted.clone();
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
                            servers.push(std::thread::spawn(move || {
                                let _ = serve(conn);
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
                    mine.push((j, s));
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
                for (j, stream) in mine {
                    let payload = &self.payload;
                    handles.push(s.spawn(move || -> io::Result<usize> {
                        let mut out = BufWriter::with_capacity(64 * 1024, stream);
                        let hashes: Vec<String> = (0..w.messages_per_peer)
                            .map(|k| format!("r{round}-{i}-{j}-{k}"))
                            .collect();
                        for h in &hashes {
                            out.write_all(&(h.len() as u32).to_be_bytes())?;
                            out.write_all(&(payload.len() as u32).to_be_bytes())?;
                            out.write_all(h.as_bytes())?;
                            out.write_all(payload)?;
                        }
                        out.flush()?;
                        drop(out);
                        let mut input = BufReader::new(stream);
                        let mut acked = 0;
                        for h in &hashes {
                            let mut len = [0u8; 4];
                            input.read_exact(&mut len)?;
                            let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
                            input.read_exact(&mut got)?;
                            if got == h.as_bytes() {
                                acked += 1;
                            }
                        }
                        Ok(acked)
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

impl Drop for TcpCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for mine in &self.links {
            for (_, s) in mine {
                let _ = s.shutdown(Shutdown::Both);
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
