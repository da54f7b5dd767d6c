//! Which neighbours a broadcast goes to.

use crate::id::NodeId;

/// A neighbour a broadcast could go to, with what the router needs to rank it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The neighbour.
    pub peer: NodeId,
    /// Lower is preferred (the node uses the number of messages in flight to it).
    pub cost: u64,
    /// The neighbour already has the message (it was sent to it, or it sent it to us).
    pub has_message: bool,
}

/// Picks the neighbours a broadcast is sent to.
pub trait Router: Send + Sync {
    /// Returns the chosen peers, best first, from `candidates`.
    fn route(&self, candidates: &[Candidate]) -> Vec<NodeId>;
}

/// The seed's router: neighbours that do not have the message yet, cheapest first, at most
/// `fanout` of them. Ties are broken by id so the choice is deterministic.
#[derive(Clone, Debug)]
pub struct FanoutRouter {
    fanout: usize,
}

impl FanoutRouter {
    /// A router that picks at most `fanout` neighbours (`usize::MAX`: all of them).
    pub fn new(fanout: usize) -> FanoutRouter {
        FanoutRouter { fanout }
    }

    /// The configured fanout.
    pub fn fanout(&self) -> usize {
        self.fanout
    }
}

impl Default for FanoutRouter {
    /// All neighbours, as the seed's broadcast does.
    fn default() -> Self {
        FanoutRouter::new(usize::MAX)
    }
}

impl Router for FanoutRouter {
    fn route(&self, candidates: &[Candidate]) -> Vec<NodeId> {
        let mut open: Vec<&Candidate> = candidates.iter().filter(|c| !c.has_message).collect();
        open.sort_by(|a, b| a.cost.cmp(&b.cost).then_with(|| a.peer.cmp(&b.peer)));
        open.into_iter()
            .take(self.fanout)
            .map(|c| c.peer.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    fn c(peer: &str, cost: u64, has_message: bool) -> Candidate {
        Candidate {
            peer: NodeId::new(peer, &Limits::default()).unwrap(),
            cost,
            has_message,
        }
    }

    fn names(v: Vec<NodeId>) -> Vec<String> {
        v.into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn skips_those_that_have_it_and_prefers_cheap() {
        let cands = [
            c("d", 5, false),
            c("b", 1, true),
            c("c", 2, false),
            c("a", 2, false),
        ];
        assert_eq!(names(FanoutRouter::new(2).route(&cands)), ["a", "c"]);
        assert_eq!(
            names(FanoutRouter::default().route(&cands)),
            ["a", "c", "d"]
        );
        assert!(FanoutRouter::new(0).route(&cands).is_empty());
        assert!(FanoutRouter::new(3).route(&[]).is_empty());
    }
}
