//! Frames to and from their wire form, in one place: direct messages and ACKs (the manager's
//! `WireMessage` / `WireAck`), and broadcast frames (`GossipMessage` / `GossipACK` with the
//! grpc-gossip extension fields). Inbound broadcast frames are checked here: a peer's frame
//! that names an invalid id is refused with a reason, never trusted.

use std::time::Duration;

use crate::broadcast::{BroadcastAck, BroadcastId, Frame};
use crate::id::{validate_id, IdKind, NodeId};
use crate::limits::Limits;
use crate::manager::{self, WireAck, WireMessage};
use crate::proto::{AckStatus, FrameKind, GossipACK, GossipMessage};

impl From<WireMessage> for GossipMessage {
    fn from(m: WireMessage) -> Self {
        let mut g = GossipMessage::new();
        g.hash = m.hash;
        g.from_hash = m.from;
        g.payload = m.payload;
        g.total_bytes = m.total;
        g.offset = m.offset;
        g
    }
}

impl From<GossipMessage> for WireMessage {
    fn from(g: GossipMessage) -> Self {
        WireMessage {
            hash: g.hash,
            from: g.from_hash,
            payload: g.payload,
            total: g.total_bytes,
            offset: g.offset,
        }
    }
}

impl From<manager::AckStatus> for AckStatus {
    fn from(status: manager::AckStatus) -> Self {
        match status {
            manager::AckStatus::Received => AckStatus::ACK_RECEIVED,
            manager::AckStatus::Duplicate => AckStatus::ACK_DUPLICATE,
            manager::AckStatus::Rejected => AckStatus::ACK_REJECTED,
            manager::AckStatus::Pending => AckStatus::ACK_PENDING,
            manager::AckStatus::Retry => AckStatus::ACK_RETRY,
        }
    }
}

impl From<AckStatus> for manager::AckStatus {
    fn from(status: AckStatus) -> Self {
        match status {
            AckStatus::ACK_RECEIVED => manager::AckStatus::Received,
            AckStatus::ACK_DUPLICATE => manager::AckStatus::Duplicate,
            AckStatus::ACK_REJECTED => manager::AckStatus::Rejected,
            AckStatus::ACK_PENDING => manager::AckStatus::Pending,
            AckStatus::ACK_RETRY => manager::AckStatus::Retry,
        }
    }
}

impl From<WireAck> for GossipACK {
    fn from(a: WireAck) -> Self {
        let mut g = GossipACK::new();
        g.hash = a.hash;
        g.from_hash = a.from;
        g.status = a.status.into();
        g.detail = a.detail;
        g
    }
}

impl From<GossipACK> for WireAck {
    fn from(g: GossipACK) -> Self {
        WireAck {
            hash: g.hash,
            from: g.from_hash,
            status: g.status.into(),
            detail: g.detail,
        }
    }
}

fn budget_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The wire form of a Payload, IHave or Graft frame from `local`. `plain`: the receiver is an
/// original node, so a payload goes as a plain message and digests are not sent at all.
pub(crate) fn message_of(local: &NodeId, frame: Frame, plain: bool) -> Option<GossipMessage> {
    let mut m = GossipMessage::new();
    m.from_hash = local.to_string();
    let (id, kind) = match frame {
        Frame::Payload {
            id,
            hops,
            hop_limit,
            budget,
            payload,
        } => {
            m.payload = payload;
            m.hops = hops;
            m.hop_limit = hop_limit;
            m.budget_ms = budget_ms(budget);
            (id, FrameKind::BROADCAST)
        }
        Frame::IHave {
            id,
            hops,
            hop_limit,
            budget,
        } => {
            m.hops = hops;
            m.hop_limit = hop_limit;
            m.budget_ms = budget_ms(budget);
            (id, FrameKind::IHAVE)
        }
        Frame::Graft { id } => (id, FrameKind::GRAFT),
        Frame::Ack(_) => return None,
    };
    m.hash = id.hash;
    if plain {
        if kind != FrameKind::BROADCAST {
            return None;
        }
        m.hops = 0;
        m.hop_limit = 0;
        m.budget_ms = 0;
    } else {
        m.kind = kind;
        m.origin = id.origin.to_string();
    }
    Some(m)
}

/// The wire form of a broadcast ACK from `local`.
pub(crate) fn ack_of(local: &NodeId, ack: BroadcastAck) -> GossipACK {
    let mut a = GossipACK::new();
    a.hash = ack.id.hash;
    a.from_hash = local.to_string();
    a.broadcast = true;
    a.origin = ack.id.origin.to_string();
    a.status = if ack.refused.is_some() {
        AckStatus::ACK_REJECTED
    } else if ack.first {
        AckStatus::ACK_RECEIVED
    } else {
        AckStatus::ACK_DUPLICATE
    };
    a.detail = ack.refused.unwrap_or_default();
    a.reached = ack.reached;
    a.missing = ack.missing.iter().map(|m| m.to_string()).collect();
    a.originals = ack.originals.iter().map(|o| o.to_string()).collect();
    a.prune = ack.prune;
    a
}

fn id_of(origin: &str, hash: String, limits: &Limits) -> Result<BroadcastId, String> {
    let origin = NodeId::new(origin, limits).map_err(|e| format!("origin: {e}"))?;
    validate_id(IdKind::Message, &hash, limits).map_err(|e| e.to_string())?;
    Ok(BroadcastId { origin, hash })
}

/// The frame a peer's broadcast `GossipMessage` carries, or why it is refused.
pub(crate) fn frame_of(mut m: GossipMessage, limits: &Limits) -> Result<Frame, String> {
    let id = id_of(&m.origin, std::mem::take(&mut m.hash), limits)?;
    let budget = Duration::from_millis(u64::from(m.budget_ms));
    match m.kind {
        FrameKind::BROADCAST => {
            if m.payload.len() > limits.max_payload_bytes {
                return Err(format!(
                    "payload of {} bytes exceeds the limit of {}",
                    m.payload.len(),
                    limits.max_payload_bytes
                ));
            }
            Ok(Frame::Payload {
                id,
                hops: m.hops,
                hop_limit: m.hop_limit,
                budget,
                payload: std::mem::take(&mut m.payload),
            })
        }
        FrameKind::IHAVE => Ok(Frame::IHave {
            id,
            hops: m.hops,
            hop_limit: m.hop_limit,
            budget,
        }),
        FrameKind::GRAFT => Ok(Frame::Graft { id }),
        FrameKind::DIRECT | FrameKind::MEMBERSHIP => Err("not a broadcast frame".into()),
    }
}

/// The answer a peer's broadcast `GossipACK` carries, or why it is refused. At most
/// `max_missing` missing ids are kept; invalid ones are dropped.
pub(crate) fn broadcast_ack_of(
    mut a: GossipACK,
    limits: &Limits,
    max_missing: usize,
) -> Result<BroadcastAck, String> {
    let id = id_of(&a.origin, std::mem::take(&mut a.hash), limits)?;
    let mut refused = None;
    let first = match a.status {
        AckStatus::ACK_RECEIVED => true,
        AckStatus::ACK_DUPLICATE => false,
        AckStatus::ACK_REJECTED => {
            refused = Some(std::mem::take(&mut a.detail));
            false
        }
        AckStatus::ACK_PENDING | AckStatus::ACK_RETRY => {
            return Err(format!("status {:?} is not a broadcast answer", a.status))
        }
    };
    let ids = |list: &[String]| -> Vec<NodeId> {
        list.iter()
            .filter_map(|m| NodeId::new(m, limits).ok())
            .take(max_missing)
            .collect()
    };
    let missing = ids(&a.missing);
    let originals = ids(&a.originals);
    Ok(BroadcastAck {
        id,
        first,
        reached: if first { a.reached.max(1) } else { 0 },
        originals,
        missing,
        prune: a.prune,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn node(s: &str) -> NodeId {
        NodeId::new(s, &Limits::default()).unwrap()
    }

    fn id() -> BroadcastId {
        BroadcastId {
            origin: node("o"),
            hash: "h".into(),
        }
    }

    #[test]
    fn frames_round_trip() {
        let limits = Limits::default();
        let frames = [
            Frame::Payload {
                id: id(),
                hops: 2,
                hop_limit: 9,
                budget: Duration::from_millis(1500),
                payload: Bytes::from_static(b"x"),
            },
            Frame::IHave {
                id: id(),
                hops: 1,
                hop_limit: 9,
                budget: Duration::from_millis(20),
            },
            Frame::Graft { id: id() },
        ];
        for f in frames {
            let m = message_of(&node("a"), f.clone(), false).unwrap();
            assert_eq!(m.from_hash, "a");
            assert_eq!(frame_of(m, &limits).unwrap(), f);
        }
        let ack = BroadcastAck {
            id: id(),
            first: true,
            reached: 7,
            originals: vec![node("go")],
            missing: vec![node("x"), node("y")],
            prune: false,
            refused: None,
        };
        let a = ack_of(&node("a"), ack.clone());
        assert_eq!(broadcast_ack_of(a, &limits, 64).unwrap(), ack);
    }

    #[test]
    fn plain_peers_get_plain_messages_only() {
        let payload = Frame::Payload {
            id: id(),
            hops: 0,
            hop_limit: 9,
            budget: Duration::from_secs(1),
            payload: Bytes::from_static(b"x"),
        };
        let m = message_of(&node("a"), payload, true).unwrap();
        assert_eq!(m.kind, FrameKind::DIRECT);
        assert!(m.origin.is_empty());
        assert_eq!(m.hash, "h");
        assert!(message_of(&node("a"), Frame::Graft { id: id() }, true).is_none());
    }

    #[test]
    fn bad_ids_are_refused() {
        let limits = Limits::default();
        let mut m = GossipMessage::new();
        m.kind = FrameKind::GRAFT;
        m.hash = "h".into();
        assert!(frame_of(m.clone(), &limits).is_err(), "empty origin");
        m.origin = "o".into();
        m.hash = String::new();
        assert!(frame_of(m, &limits).is_err(), "empty hash");
    }
}
