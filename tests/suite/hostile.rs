//! Hostile and malformed input: each gets a clear error (in the gRPC status, to the caller or
//! in the counters) while the node keeps serving its other peers.

use std::io::Read;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use futures::executor::block_on;
use futures::{SinkExt, StreamExt};
use grpc_gossip::proto::{AckStatus, GossipACK, GossipClient, GossipMessage};
use grpc_gossip::{Message, Node, NodeConfig};
use grpcio::{
    CallOption, ChannelBuilder, Client, GrpcSlice, Marshaller, MessageReader, MetadataBuilder,
    Method, MethodType, RpcStatusCode, WriteFlags,
};

// The signature is grpcio's `SerializeFn<Vec<u8>>`: `&Vec` is imposed.
#[allow(clippy::ptr_arg)]
fn raw_ser(t: &Vec<u8>, buf: &mut GrpcSlice) -> grpcio::Result<()> {
    *buf = GrpcSlice::from(t.clone());
    Ok(())
}

fn raw_de(mut reader: MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut v = Vec::new();
    reader
        .read_to_end(&mut v)
        .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(v)
}

const RAW: Marshaller<Vec<u8>> = Marshaller {
    ser: raw_ser,
    de: raw_de,
};

/// `MessageStream` with raw bytes on the wire, to send what protobuf would never produce.
const RAW_MESSAGE_STREAM: Method<Vec<u8>, Vec<u8>> = Method {
    ty: MethodType::Duplex,
    name: "/gossip_rpc.Gossip/MessageStream",
    req_mar: RAW,
    resp_mar: RAW,
};

fn with_id(id: &str) -> CallOption {
    let mut md = MetadataBuilder::new();
    md.add_str("gossip-node-id", id).unwrap();
    CallOption::default().headers(md.build())
}

/// The node under attack, plus a well-behaved neighbour that must keep getting through.
struct Target {
    node: Node,
    friend: Node,
    client: GossipClient,
    raw: Client,
}

fn target(tune: impl FnOnce(&mut NodeConfig)) -> Target {
    let f = factory();
    let mut c = config("target");
    tune(&mut c);
    let node = start_with(c, &f);
    let friend = start("friend", &f);
    connect(&friend, &node);
    let channel = ChannelBuilder::new(f.env().clone()).connect(&node.local_addr().to_string());
    Target {
        client: GossipClient::new(channel.clone()),
        raw: Client::new(channel),
        node,
        friend,
    }
}

impl Target {
    /// The node still serves its well-behaved neighbour.
    fn still_serves(&self, hash: &str) {
        self.friend
            .send_message("target", Message::new(hash, "still here"))
            .unwrap();
        let c = self.friend.completions().recv_timeout(PATIENCE).unwrap();
        assert!(c.is_acked(), "{c:?}");
    }
}

/// Sends one raw frame and returns the status the call ended with: the server may end it so
/// fast that the send itself already reports it.
fn raw_status(
    tx: &mut grpcio::ClientDuplexSender<Vec<u8>>,
    rx: &mut grpcio::ClientDuplexReceiver<Vec<u8>>,
    frame: Vec<u8>,
) -> RpcStatusCode {
    match block_on(tx.send((frame, WriteFlags::default()))) {
        Err(grpcio::Error::RpcFinished(Some(s))) => s.code(),
        Err(e) => panic!("send failed: {e}"),
        Ok(()) => status_of(block_on(rx.next())),
    }
}

fn status_of<T: std::fmt::Debug>(r: Option<grpcio::Result<T>>) -> RpcStatusCode {
    match r {
        Some(Err(grpcio::Error::RpcFailure(s))) => s.code(),
        other => panic!("expected an RPC failure, got {other:?}"),
    }
}

/// How a call ended within `wait`, or `None` if it is still open (and sent nothing). A
/// refused call ends at once; an accepted one stays open when there is nothing to read.
fn ended_within<T: std::fmt::Debug>(
    rx: &mut grpcio::ClientDuplexReceiver<T>,
    wait: Duration,
) -> Option<RpcStatusCode> {
    match block_on(futures::future::select(
        rx.next(),
        futures_timer::Delay::new(wait),
    )) {
        futures::future::Either::Left((r, _)) => Some(status_of(r)),
        futures::future::Either::Right(_) => None,
    }
}

#[test]
fn garbage_bytes_get_invalid_argument() {
    let t = target(|_| {});
    let (mut tx, mut rx) = t
        .raw
        .duplex_streaming(&RAW_MESSAGE_STREAM, with_id("junk"))
        .unwrap();
    // Field 1 with wire type 7: not protobuf.
    let garbage = vec![0x0f, 0xff, 0xff, 0xff];
    assert_eq!(
        raw_status(&mut tx, &mut rx, garbage),
        RpcStatusCode::INVALID_ARGUMENT
    );
    t.still_serves("after-garbage");
    assert_eq!(t.node.stats().delivered, 1);
}

#[test]
fn non_utf8_sender_id_gets_invalid_argument() {
    let t = target(|_| {});
    let (mut tx, mut rx) = t
        .raw
        .duplex_streaming(&RAW_MESSAGE_STREAM, CallOption::default())
        .unwrap();
    // hash = "h", from_hash = 0xff 0xfe (not UTF-8), no header: the first frame is the identity.
    let frame = vec![0x0a, 0x01, b'h', 0x12, 0x02, 0xff, 0xfe];
    assert_eq!(
        raw_status(&mut tx, &mut rx, frame),
        RpcStatusCode::INVALID_ARGUMENT
    );
    t.still_serves("after-non-utf8");
}

#[test]
fn empty_and_over_long_ids_get_invalid_argument() {
    let t = target(|_| {});
    for id in [String::new(), "x".repeat(300)] {
        let (mut tx, mut rx) = t.client.message_stream_opt(with_id(&id)).unwrap();
        let mut m = GossipMessage::new();
        m.hash = "h".into();
        let _ = block_on(tx.send((m, WriteFlags::default())));
        assert_eq!(
            status_of(block_on(rx.next())),
            RpcStatusCode::INVALID_ARGUMENT,
            "id {id:?}"
        );
    }
    t.still_serves("after-bad-ids");
}

/// A frame no ACK could name (empty or over-long hash): a peer that announced our features has
/// its call ended with the reason; an original-style peer (no features) has the frame dropped,
/// counted, and its call goes on.
#[test]
fn frames_without_a_usable_hash_end_the_call_of_peers_that_know_better() {
    let t = target(|_| {});
    let mut md = MetadataBuilder::new();
    md.add_str("gossip-node-id", "modern").unwrap();
    md.add_str("gossip-features", "batch,chunk").unwrap();
    let call = CallOption::default().headers(md.build());
    for hash in [String::new(), "h".repeat(300)] {
        let (mut tx, mut rx) = t.client.message_stream_opt(call.clone()).unwrap();
        let mut m = GossipMessage::new();
        m.hash = hash.clone();
        m.from_hash = "modern".into();
        let _ = block_on(tx.send((m, WriteFlags::default())));
        match block_on(rx.next()) {
            Some(Err(grpcio::Error::RpcFailure(s))) => {
                assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT);
                assert!(s.message().contains("hash"), "{}", s.message());
            }
            other => panic!("hash {hash:?}: {other:?}"),
        }
    }

    // Without features: dropped alone, counted; the same call then delivers a good frame.
    let (_acks_tx, mut acks_rx) = t.client.ack_stream_opt(with_id("old")).unwrap();
    let (mut tx, _rx) = t.client.message_stream_opt(with_id("old")).unwrap();
    for hash in ["", "fine"] {
        let mut m = GossipMessage::new();
        m.hash = hash.into();
        m.from_hash = "old".into();
        block_on(tx.send((m, WriteFlags::default()))).unwrap();
    }
    let ack: GossipACK = next_within(&mut acks_rx, "the ACK of \"fine\"")
        .unwrap()
        .unwrap();
    assert_eq!(ack.hash, "fine");
    assert_eq!(t.node.stats().rejected, 1);
    t.still_serves("after-hashless");
}

#[test]
fn from_hash_that_is_not_the_stream_sender_is_rejected() {
    let t = target(|_| {});
    let (mut acks_tx, mut acks_rx) = t.client.ack_stream_opt(with_id("honest")).unwrap();
    let (mut tx, _rx) = t.client.message_stream_opt(with_id("honest")).unwrap();
    let mut m = GossipMessage::new();
    m.hash = "forged".into();
    m.from_hash = "someone-else".into();
    block_on(tx.send((m, WriteFlags::default()))).unwrap();
    let ack: GossipACK = next_within(&mut acks_rx, "the refusal of \"forged\"")
        .unwrap()
        .unwrap();
    assert_eq!(ack.hash, "forged");
    assert_eq!(ack.status, AckStatus::ACK_REJECTED);
    assert!(ack.detail.contains("does not match"), "{}", ack.detail);
    assert_eq!(t.node.stats().rejected, 1);
    assert_eq!(t.node.stats().delivered, 0);
    let _ = block_on(acks_tx.close());
    t.still_serves("after-forgery");
}

#[test]
fn acks_for_messages_never_sent_are_counted_and_ignored() {
    let t = target(|_| {});
    let (mut tx, _rx) = t.client.ack_stream_opt(with_id("friend")).unwrap();
    for hash in ["never-sent", "never-sent", "other"] {
        let mut a = GossipACK::new();
        a.hash = hash.into();
        a.from_hash = "friend".into();
        block_on(tx.send((a, WriteFlags::default()))).unwrap();
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    while t.node.stats().unknown_acks < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(t.node.stats().unknown_acks, 3);
    t.still_serves("after-bogus-acks");
}

#[test]
fn a_flood_of_duplicates_is_delivered_once_and_acked_each_time() {
    let t = target(|_| {});
    let (_acks_tx, mut acks_rx) = t.client.ack_stream_opt(with_id("flood")).unwrap();
    let (mut tx, _rx) = t.client.message_stream_opt(with_id("flood")).unwrap();
    let frame = || {
        let mut m = GossipMessage::new();
        m.hash = "same".into();
        m.payload = Bytes::from_static(b"again");
        (m, WriteFlags::default())
    };
    // The first copy's ACK proves the AckStream is registered: until then the node parks ACKs
    // for this sender in a bounded queue (4096), which a flood sent at once could overrun
    // when the AckStream's thread starts late on a busy machine.
    block_on(tx.send(frame())).unwrap();
    let first = next_within(&mut acks_rx, "the first ACK").unwrap().unwrap();
    assert_eq!(first.status, AckStatus::ACK_RECEIVED, "{first:?}");
    const N: usize = 5_000;
    let sender = std::thread::spawn(move || {
        for _ in 0..N {
            block_on(tx.feed(frame())).unwrap();
        }
        block_on(tx.flush()).unwrap();
        tx
    });
    for i in 0..N {
        let ack = next_within(&mut acks_rx, &format!("ACK {i} of the flood"))
            .unwrap()
            .unwrap();
        assert_eq!(ack.status, AckStatus::ACK_DUPLICATE, "ACK {i}: {ack:?}");
    }
    let _tx = sender.join().unwrap();
    let d = t.node.deliveries();
    assert_eq!(d.recv_timeout(PATIENCE).unwrap().hash, "same");
    assert_quiet(&d);
    t.still_serves("after-flood");
}

#[test]
fn streams_per_peer_are_capped() {
    let t = target(|c| c.max_streams_per_peer = 4);
    // Many streams from one id: past the cap they are refused.
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let (tx, mut rx) = t.client.message_stream_opt(with_id("greedy")).unwrap();
        match ended_within(&mut rx, Duration::from_millis(300)) {
            Some(code) => {
                assert_eq!(code, RpcStatusCode::RESOURCE_EXHAUSTED);
                refused += 1;
            }
            None => kept.push((tx, rx)),
        }
    }
    assert_eq!((kept.len(), refused), (4, 6));
    // A refusal costs no thread: a flood past the cap leaves the thread count where it was.
    let threads = t.node.stream_threads();
    let flood: Vec<_> = (0..50)
        .map(|_| t.client.message_stream_opt(with_id("greedy")).unwrap())
        .collect();
    for (_tx, mut rx) in flood {
        assert_eq!(
            status_of(block_on(rx.next())),
            RpcStatusCode::RESOURCE_EXHAUSTED
        );
    }
    assert_eq!(
        t.node.stream_threads(),
        threads,
        "no thread per refused call"
    );

    drop(kept);
    t.still_serves("after-greed");
}

/// A frame as an original node sends it: no header, its id in `from_hash`.
fn original_frame(hash: &str) -> GossipMessage {
    let mut m = GossipMessage::new();
    m.hash = hash.into();
    m.from_hash = "orig".into();
    m.payload = Bytes::from_static(b"from an original");
    m
}

#[test]
fn idle_streams_without_a_header_are_kept_and_a_flood_of_them_displaces_none() {
    let t = target(|c| c.max_unidentified_streams = 8);
    let deliveries = t.node.deliveries();
    // An original node opens its streams when it connects and may stay quiet for long: its
    // idle AckStream is kept (there is no deadline), and its MessageStream is identified by
    // its first frame.
    let (_idle_acks, mut idle_answers) = t.client.ack_stream().unwrap();
    let (mut messages, _answers) = t.client.message_stream().unwrap();
    block_on(messages.send((original_frame("o1"), WriteFlags::default()))).unwrap();
    assert_eq!(deliveries.recv_timeout(PATIENCE).unwrap().hash, "o1");

    // A flood of streams that never say who they are: 7 more places (the idle AckStream holds
    // one), the rest refused, and none costs a thread.
    let threads = t.node.stream_threads();
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let (tx, mut rx) = t.client.message_stream().unwrap();
        match ended_within(&mut rx, Duration::from_millis(300)) {
            Some(code) => {
                assert_eq!(code, RpcStatusCode::RESOURCE_EXHAUSTED);
                refused += 1;
            }
            None => flood.push((tx, rx)),
        }
    }
    assert_eq!((flood.len(), refused), (7, 33));
    assert_eq!(
        t.node.stream_threads(),
        threads,
        "no thread per waiting stream"
    );
    assert!(t.node.stats().refused_unidentified_streams >= 33);

    // Well past any handshake deadline, the original's streams still work: its identified
    // MessageStream delivers, its idle AckStream is still open.
    std::thread::sleep(Duration::from_secs(2));
    block_on(messages.send((original_frame("o2"), WriteFlags::default()))).unwrap();
    assert_eq!(deliveries.recv_timeout(PATIENCE).unwrap().hash, "o2");
    assert_eq!(
        ended_within(&mut idle_answers, Duration::from_millis(200)),
        None
    );
    // The flood leaves: its places are free again.
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    let (_tx, mut rx) = t.client.message_stream().unwrap();
    assert_eq!(ended_within(&mut rx, Duration::from_millis(300)), None);
    t.still_serves("after-flood");
}

#[test]
fn client_vanishing_mid_message_harms_nothing() {
    let t = target(|_| {});
    for round in 0..5 {
        let (mut tx, rx) = t.client.message_stream_opt(with_id("flaky")).unwrap();
        let mut m = GossipMessage::new();
        m.hash = format!("big-{round}");
        m.payload = Bytes::from(vec![9u8; 32 * 1024 * 1024]);
        // Start the write and cancel the call while the 32 MiB are still on their way.
        let _ = tx.start_send_unpin((m, WriteFlags::default()));
        std::thread::sleep(Duration::from_millis(2));
        tx.cancel();
        drop(rx);
    }
    t.still_serves("after-vanishing");
    // Whatever arrived whole was delivered whole; nothing else was.
    for d in t.node.deliveries().try_iter() {
        assert!(d.payload.len() == 32 * 1024 * 1024 || d.hash == "after-vanishing");
    }
}
