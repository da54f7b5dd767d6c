//! Membership frames and their wire form (`MembershipFrame`, the payload of a `GossipMessage`
//! of kind `MEMBERSHIP`). Everything a peer sends is checked here: ids are validated, addresses
//! and samples bounded, a digest must have all its buckets.

use bytes::Bytes;
use protobuf::Message as _;

use super::{Digest, Member, MemberState, Message, Peer, Update, DIGEST_BUCKETS};
use crate::id::NodeId;
use crate::limits::Limits;
use crate::proto::{MemberStatus, MemberUpdate, MembershipFrame, MembershipKind, MembershipPeer};

/// Longest address a frame may carry, in bytes.
pub const MAX_ADDR_BYTES: usize = 256;
/// Most peers a view message (a shuffle sample) may carry.
pub const MAX_SAMPLE: usize = 64;
/// Most member updates one frame may carry; larger lists travel in several frames.
pub const MAX_UPDATES: usize = 4096;

/// What one membership frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A HyParView message (see [`Message`]).
    View(Message<Peer>),
    /// Member updates to merge; `want`: the digest buckets whose entries the receiver should
    /// send back (push-pull anti-entropy), 0 for none.
    Updates {
        /// The updates.
        updates: Vec<Update<Peer>>,
        /// Buckets asked for in return.
        want: u64,
    },
    /// The sender's list digest: the receiver answers with the entries of the buckets that
    /// differ, and asks for the sender's.
    Digest(Box<Digest>),
}

fn peer_to_wire(p: &Peer) -> MembershipPeer {
    let mut w = MembershipPeer::new();
    w.id = p.id.to_string();
    w.addr = p.addr.clone();
    w
}

fn peer_of(w: &MembershipPeer, limits: &Limits) -> Result<Peer, String> {
    let id = NodeId::new(&w.id, limits).map_err(|e| format!("member id: {e}"))?;
    Ok(Peer::new(id, addr_of(&w.addr)?))
}

fn addr_of(addr: &str) -> Result<String, String> {
    if addr.is_empty() || addr.len() > MAX_ADDR_BYTES {
        return Err(format!(
            "an address of {} bytes (1 to {MAX_ADDR_BYTES} allowed)",
            addr.len()
        ));
    }
    Ok(addr.to_owned())
}

fn peers_of(peers: &[MembershipPeer], limits: &Limits) -> Result<Vec<Peer>, String> {
    if peers.len() > MAX_SAMPLE {
        return Err(format!(
            "a sample of {} peers (at most {MAX_SAMPLE})",
            peers.len()
        ));
    }
    peers.iter().map(|p| peer_of(p, limits)).collect()
}

fn status_of(state: MemberState) -> MemberStatus {
    match state {
        MemberState::Joined => MemberStatus::JOINED,
        MemberState::Suspected => MemberStatus::SUSPECTED,
        MemberState::Failed => MemberStatus::FAILED,
        MemberState::Left => MemberStatus::LEFT,
    }
}

fn state_of(status: MemberStatus) -> MemberState {
    match status {
        MemberStatus::JOINED => MemberState::Joined,
        MemberStatus::SUSPECTED => MemberState::Suspected,
        MemberStatus::FAILED => MemberState::Failed,
        MemberStatus::LEFT => MemberState::Left,
    }
}

/// The payload of a `MEMBERSHIP` frame from a node reached at `sender_addr`.
pub fn encode(frame: &Frame, sender_addr: &str) -> Bytes {
    let mut w = MembershipFrame::new();
    w.sender_addr = sender_addr.to_owned();
    match frame {
        Frame::View(message) => match message {
            Message::Join => w.kind = MembershipKind::JOIN,
            Message::ForwardJoin { joiner, ttl } => {
                w.kind = MembershipKind::FORWARD_JOIN;
                w.peer = protobuf::SingularPtrField::some(peer_to_wire(joiner));
                w.ttl = *ttl;
            }
            Message::Neighbor { high } => {
                w.kind = MembershipKind::NEIGHBOR;
                w.flag = *high;
            }
            Message::Swap { spare } => {
                // A high-priority NEIGHBOR to a node that ignores `peer` there: what the swap
                // asks degrades to what it did before.
                w.kind = MembershipKind::NEIGHBOR;
                w.flag = true;
                w.peer = protobuf::SingularPtrField::some(peer_to_wire(spare));
            }
            Message::NeighborReply { accepted } => {
                w.kind = MembershipKind::NEIGHBOR_REPLY;
                w.flag = *accepted;
            }
            Message::Disconnect => w.kind = MembershipKind::DISCONNECT,
            Message::Shuffle { origin, ttl, peers } => {
                w.kind = MembershipKind::SHUFFLE;
                w.peer = protobuf::SingularPtrField::some(peer_to_wire(origin));
                w.ttl = *ttl;
                w.peers = peers.iter().map(peer_to_wire).collect();
            }
            Message::ShuffleReply { peers } => {
                w.kind = MembershipKind::SHUFFLE_REPLY;
                w.peers = peers.iter().map(peer_to_wire).collect();
            }
        },
        Frame::Updates { updates, want } => {
            w.kind = MembershipKind::UPDATES;
            w.want = *want;
            w.updates = updates
                .iter()
                .map(|u| {
                    let mut m = MemberUpdate::new();
                    m.member = protobuf::SingularPtrField::some(peer_to_wire(&u.member.id));
                    m.incarnation = u.member.incarnation;
                    m.status = status_of(u.member.state);
                    m.reporter = u
                        .reporter
                        .as_ref()
                        .map(|r| r.id.to_string())
                        .unwrap_or_default();
                    m
                })
                .collect();
        }
        Frame::Digest(digest) => {
            w.kind = MembershipKind::DIGEST;
            w.digest = digest.buckets().to_vec();
        }
    }
    // Writing to a Vec cannot fail for a message whose fields are all set.
    Bytes::from(w.write_to_bytes().unwrap_or_default())
}

/// The frame a peer's `MEMBERSHIP` payload carries and the address its sender gives, or why it
/// is refused.
pub fn decode(payload: &[u8], limits: &Limits) -> Result<(String, Frame), String> {
    let w = MembershipFrame::parse_from_bytes(payload).map_err(|e| e.to_string())?;
    let sender_addr = addr_of(&w.sender_addr).map_err(|e| format!("sender: {e}"))?;
    let peer = || match w.peer.as_ref() {
        Some(p) => peer_of(p, limits),
        None => Err("no peer".to_owned()),
    };
    let frame = match w.kind {
        MembershipKind::NO_KIND => return Err("a membership frame of no kind".into()),
        MembershipKind::JOIN => Frame::View(Message::Join),
        MembershipKind::FORWARD_JOIN => Frame::View(Message::ForwardJoin {
            joiner: peer()?,
            ttl: w.ttl,
        }),
        MembershipKind::NEIGHBOR if w.peer.is_some() => {
            Frame::View(Message::Swap { spare: peer()? })
        }
        MembershipKind::NEIGHBOR => Frame::View(Message::Neighbor { high: w.flag }),
        MembershipKind::NEIGHBOR_REPLY => Frame::View(Message::NeighborReply { accepted: w.flag }),
        MembershipKind::DISCONNECT => Frame::View(Message::Disconnect),
        MembershipKind::SHUFFLE => Frame::View(Message::Shuffle {
            origin: peer()?,
            ttl: w.ttl,
            peers: peers_of(&w.peers, limits)?,
        }),
        MembershipKind::SHUFFLE_REPLY => Frame::View(Message::ShuffleReply {
            peers: peers_of(&w.peers, limits)?,
        }),
        MembershipKind::UPDATES => {
            if w.updates.len() > MAX_UPDATES {
                return Err(format!(
                    "{} updates in one frame (at most {MAX_UPDATES})",
                    w.updates.len()
                ));
            }
            let updates = w
                .updates
                .iter()
                .map(|m| {
                    let member = match m.member.as_ref() {
                        Some(p) => peer_of(p, limits)?,
                        None => return Err("an update without its member".to_owned()),
                    };
                    let reporter = match m.reporter.is_empty() {
                        true => None,
                        false => Some(Peer::new(
                            NodeId::new(&m.reporter, limits)
                                .map_err(|e| format!("reporter: {e}"))?,
                            // A reporter is counted by its id only.
                            member.addr.clone(),
                        )),
                    };
                    Ok(Update {
                        member: Member {
                            id: member,
                            incarnation: m.incarnation,
                            state: state_of(m.status),
                        },
                        reporter,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Frame::Updates {
                updates,
                want: w.want,
            }
        }
        MembershipKind::DIGEST => {
            let buckets: [u64; DIGEST_BUCKETS] = w.digest.as_slice().try_into().map_err(|_| {
                format!(
                    "a digest of {} buckets ({DIGEST_BUCKETS} expected)",
                    w.digest.len()
                )
            })?;
            Frame::Digest(Box::new(Digest::from_buckets(buckets)))
        }
    };
    Ok((sender_addr, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> Peer {
        Peer::new(
            NodeId::new(id, &Limits::default()).unwrap(),
            format!("{id}.test:1"),
        )
    }

    fn round_trip(frame: Frame) {
        let bytes = encode(&frame, "me.test:7");
        let (addr, back) = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(addr, "me.test:7");
        assert_eq!(back, frame);
        if let (
            Frame::View(Message::ForwardJoin { joiner: a, .. }),
            Frame::View(Message::ForwardJoin { joiner: b, .. }),
        ) = (&frame, &back)
        {
            assert_eq!(a.addr, b.addr);
        }
    }

    #[test]
    fn every_frame_travels_unchanged() {
        round_trip(Frame::View(Message::Join));
        round_trip(Frame::View(Message::ForwardJoin {
            joiner: peer("j"),
            ttl: 6,
        }));
        round_trip(Frame::View(Message::Neighbor { high: true }));
        round_trip(Frame::View(Message::Swap { spare: peer("s") }));
        round_trip(Frame::View(Message::NeighborReply { accepted: false }));
        round_trip(Frame::View(Message::Disconnect));
        round_trip(Frame::View(Message::Shuffle {
            origin: peer("o"),
            ttl: 3,
            peers: vec![peer("a"), peer("b")],
        }));
        round_trip(Frame::View(Message::ShuffleReply {
            peers: vec![peer("c")],
        }));
        round_trip(Frame::Updates {
            updates: vec![
                Update {
                    member: Member {
                        id: peer("a"),
                        incarnation: 7,
                        state: MemberState::Joined,
                    },
                    reporter: None,
                },
                Update {
                    member: Member {
                        id: peer("b"),
                        incarnation: 2,
                        state: MemberState::Suspected,
                    },
                    reporter: Some(peer("c")),
                },
            ],
            want: 0b1010,
        });
        let mut buckets = [0u64; DIGEST_BUCKETS];
        buckets[5] = 99;
        round_trip(Frame::Digest(Box::new(Digest::from_buckets(buckets))));
    }

    #[test]
    fn what_a_peer_controls_is_checked() {
        let limits = Limits::default();
        let mut w = MembershipFrame::new();
        w.kind = MembershipKind::JOIN;
        assert!(decode(&w.write_to_bytes().unwrap(), &limits)
            .unwrap_err()
            .contains("sender"));
        w.sender_addr = "x".repeat(MAX_ADDR_BYTES + 1);
        assert!(decode(&w.write_to_bytes().unwrap(), &limits).is_err());
        w.sender_addr = "ok:1".into();
        w.kind = MembershipKind::NO_KIND;
        assert!(decode(&w.write_to_bytes().unwrap(), &limits).is_err());
        w.kind = MembershipKind::DIGEST;
        w.digest = vec![1, 2, 3];
        assert!(decode(&w.write_to_bytes().unwrap(), &limits)
            .unwrap_err()
            .contains("buckets"));
        w.kind = MembershipKind::SHUFFLE_REPLY;
        w.peers = (0..=MAX_SAMPLE)
            .map(|i| peer_to_wire(&peer(&format!("p{i}"))))
            .collect();
        assert!(decode(&w.write_to_bytes().unwrap(), &limits)
            .unwrap_err()
            .contains("sample"));
        w.peers = vec![{
            let mut p = MembershipPeer::new();
            p.id = "x".repeat(Limits::default().max_id_bytes + 1);
            p.addr = "a:1".into();
            p
        }]
        .into();
        assert!(decode(&w.write_to_bytes().unwrap(), &limits).is_err());
        w.kind = MembershipKind::FORWARD_JOIN;
        w.peers.clear();
        assert!(decode(&w.write_to_bytes().unwrap(), &limits)
            .unwrap_err()
            .contains("peer"));
        assert!(decode(b"\xff\xff\xff", &limits).is_err());
    }
}
