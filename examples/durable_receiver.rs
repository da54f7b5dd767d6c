//! Acknowledged deliveries: a receiver that ACKs a message only once it is safe in an
//! append-only journal, so that a sender never sees an ACK for a message a crash could lose.
//!
//! ```sh
//! cargo run --release --example durable_receiver -- r 127.0.0.1:7002 /tmp/r.journal
//! ```
//!
//! Each record is `hash length (u32 LE) | hash | payload length (u64 LE) | payload`, appended
//! and synced before the delivery is confirmed. At start the journal is read back: a record cut
//! short by a crash is dropped (its message was never confirmed, so its sender sends it again),
//! and the hashes already stored are remembered, so a copy that arrives again after a restart
//! (stored before the crash, its ACK lost with the process) is confirmed without being stored
//! twice. Prints `stored hash=..` or `again hash=..` per delivery.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use grpc_gossip::{Deliveries, Node, NodeConfig};

/// Reads the journal's complete records; cuts off a torn tail. Returns the hashes stored.
fn recover(path: &Path) -> std::io::Result<(File, HashSet<String>)> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut stored = HashSet::new();
    let mut at = 0usize;
    let whole = loop {
        let Some(record) = next_record(&bytes[at..]) else {
            break at;
        };
        stored.insert(record.0);
        at += record.1;
    };
    if whole < bytes.len() {
        eprintln!(
            "journal: dropping {} bytes of a torn record",
            bytes.len() - whole
        );
        file.set_len(whole as u64)?;
        file.sync_all()?;
    }
    file.seek(SeekFrom::End(0))?;
    Ok((file, stored))
}

/// The hash of the record at the start of `bytes` and the record's length, if it is whole.
fn next_record(bytes: &[u8]) -> Option<(String, usize)> {
    let hash_len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let hash = std::str::from_utf8(bytes.get(4..4 + hash_len)?)
        .ok()?
        .to_owned();
    let at = 4 + hash_len;
    let payload_len = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?) as usize;
    let end = (at + 8).checked_add(payload_len)?;
    bytes.get(at + 8..end)?;
    Some((hash, end))
}

fn append(file: &mut File, hash: &str, payload: &[u8]) -> std::io::Result<()> {
    let mut record = Vec::with_capacity(12 + hash.len() + payload.len());
    record.extend_from_slice(&(hash.len() as u32).to_le_bytes());
    record.extend_from_slice(hash.as_bytes());
    record.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    record.extend_from_slice(payload);
    file.write_all(&record)?;
    // The ACK is a promise: the bytes are on disk before it leaves.
    file.sync_data()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [id, listen, journal] = args.as_slice() else {
        return Err("usage: durable_receiver ID LISTEN_ADDR JOURNAL".into());
    };
    let (mut file, mut stored) = recover(Path::new(journal))?;
    let mut config = NodeConfig::new(id.as_str(), listen.as_str());
    // At most 16 messages wait for the journal; beyond that the node stops reading.
    config.deliveries = Deliveries::Confirmed(16);
    let node = Node::start(config)?;
    println!("listening id={id} addr={}", node.local_addr());
    for delivery in node.deliveries() {
        let key = format!("{}.{}", delivery.from, delivery.hash);
        if stored.contains(&key) {
            println!("again hash={}", delivery.hash);
            delivery.confirm();
            continue;
        }
        match append(&mut file, &key, &delivery.payload) {
            Ok(()) => {
                stored.insert(key);
                println!("stored hash={}", delivery.hash);
                delivery.confirm();
            }
            // Not confirmed: the sender is told to send it again later.
            Err(e) => {
                eprintln!("journal: {e}");
                delivery.decline();
            }
        }
    }
    Ok(())
}
