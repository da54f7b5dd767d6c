//! The membership list: every member a node has heard of, with its state and incarnation,
//! merged from updates that travel the broadcast plane (SWIM's rules, with Lifeguard's idea of
//! confirmations). The broadcast plane relays; a list only originates: its node's join, its
//! own suspicions, its refutations and its leave. Every list decides failures for itself from
//! the same suspicions, so a failure needs no message of its own.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a member is, as far as this node knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Up, as far as anyone has said.
    Joined,
    /// A member lost its link to it; it fails unless it refutes in time.
    Suspected,
    /// Declared failed.
    Failed,
    /// It left on its own (a graceful shutdown).
    Left,
}

impl MemberState {
    /// Its name, as `gossip node` prints it: `joined`, `suspected`, `failed` or `left`.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Joined => "joined",
            MemberState::Suspected => "suspected",
            MemberState::Failed => "failed",
            MemberState::Left => "left",
        }
    }
}

/// One entry of the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member<P> {
    /// Its identity.
    pub id: P,
    /// Its incarnation: a member that restarts, or refutes a suspicion, raises it; the higher
    /// one always wins. (32 bits: seconds of the clock at start fit until 2106, and the
    /// simulator keeps 10,000 lists of 10,000 members.)
    pub incarnation: u32,
    /// Its state.
    pub state: MemberState,
}

/// What travels between lists: one member's state at an incarnation, and who says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update<P> {
    /// The member.
    pub member: Member<P>,
    /// For a suspicion: the member that lost its link to it (confirmations count distinct
    /// reporters).
    pub reporter: Option<P>,
}

/// A change the application hears of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEvent<P> {
    /// The member and its new state.
    pub member: Member<P>,
}

/// How the list decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListConfig {
    /// Distinct members that must suspect a member for it to fail at once (default 2: one bad
    /// link does not evict a healthy node).
    pub confirmations: usize,
    /// A suspicion with fewer confirmations fails the member after this long without a
    /// refutation (default 10 s): how a node with a single neighbour, or the survivor of a
    /// cluster of two, decides.
    pub suspect_timeout: Duration,
    /// Members a list holds at most (default 100,000): updates naming more new members are
    /// dropped, so that a peer cannot make a list grow without bound.
    pub max_members: usize,
}

impl Default for ListConfig {
    fn default() -> ListConfig {
        ListConfig {
            confirmations: 2,
            suspect_timeout: Duration::from_secs(10),
            max_members: 100_000,
        }
    }
}

struct Suspicion<P> {
    since: Instant,
    /// The first reporter, if any (inline: most suspicions end before a second comes, and a
    /// list may hold thousands at once).
    first: Option<P>,
    /// Distinct reporters after the first.
    others: Vec<P>,
}

impl<P: PartialEq> Suspicion<P> {
    fn add(&mut self, reporter: P) {
        match &self.first {
            None => self.first = Some(reporter),
            Some(f) if *f == reporter || self.others.contains(&reporter) => {}
            Some(_) => self.others.push(reporter),
        }
    }

    fn reporters(&self) -> usize {
        usize::from(self.first.is_some()) + self.others.len()
    }
}

/// Buckets of a [`Digest`]: members are spread over them by a hash of their id.
pub const DIGEST_BUCKETS: usize = 64;

/// A summary of a list, for anti-entropy without sending it: per bucket of members, the XOR of
/// a hash of each member's (id, incarnation, state). Two lists that hold the same entries have
/// equal digests; where a bucket differs, only that bucket's members need to travel.
///
/// The hashes are FNV-1a over the id's [`Hash`] encoding, mixed with the incarnation and the
/// state: fixed functions, so that digests from different builds compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest([u64; DIGEST_BUCKETS]);

impl Digest {
    fn empty() -> Digest {
        Digest([0; DIGEST_BUCKETS])
    }

    /// A digest as it travels (see [`Digest::buckets`]).
    pub fn from_buckets(buckets: [u64; DIGEST_BUCKETS]) -> Digest {
        Digest(buckets)
    }

    /// The buckets, to send.
    pub fn buckets(&self) -> &[u64; DIGEST_BUCKETS] {
        &self.0
    }

    /// The buckets in which `self` and `other` differ, as a bit mask (bit `b`: bucket `b`); 0
    /// when the lists agree (up to a hash collision, 2^-64 per bucket).
    pub fn differs(&self, other: &Digest) -> u64 {
        self.0
            .iter()
            .zip(other.0.iter())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .fold(0, |mask, (i, _)| mask | (1 << i))
    }

    /// Adds (or, again, removes) one entry.
    fn toggle<P: Hash>(&mut self, id: &P, incarnation: u32, state: MemberState) {
        let key = id_hash(id);
        let entry = mix(key ^ (u64::from(incarnation) << 8) ^ state as u64);
        self.0[bucket_of(key)] ^= entry;
    }
}

/// FNV-1a, 64 bits: a fixed hash of an id, whatever the build.
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn id_hash<P: Hash>(id: &P) -> u64 {
    let mut h = Fnv1a(0xcbf2_9ce4_8422_2325);
    id.hash(&mut h);
    mix(h.finish())
}

/// SplitMix64's finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether a member in `state` counts as up (joined or suspected).
fn is_up(state: MemberState) -> bool {
    matches!(state, MemberState::Joined | MemberState::Suspected)
}

/// The [`MemberList::live_digest`] a list holding exactly `ids` as its live members has: to
/// check many lists against one live set without walking each.
pub fn live_digest_of<'a, P: Hash + 'a>(ids: impl IntoIterator<Item = &'a P>) -> u64 {
    ids.into_iter().fold(0, |d, id| d ^ id_hash(id))
}

fn bucket_of(key: u64) -> usize {
    (key >> 58) as usize % DIGEST_BUCKETS
}

/// One node's membership list.
pub struct MemberList<P> {
    me: Member<P>,
    config: ListConfig,
    /// The others: incarnation and state (the id is the key, kept once).
    members: HashMap<P, (u32, MemberState)>,
    suspicions: HashMap<P, Suspicion<P>>,
    /// Of `me` and `members`, kept up to date with every change.
    digest: Digest,
    /// XOR of the id hashes of the members up, this node included.
    live_digest: u64,
}

impl<P: Debug> Debug for MemberList<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberList")
            .field("me", &self.me)
            .field("members", &self.members.len())
            .field("suspicions", &self.suspicions.len())
            .finish()
    }
}

/// Whether `new` replaces `old`: a higher incarnation, or at the same one a graver state.
fn overrides<P>(new: &Member<P>, old: &(u32, MemberState)) -> bool {
    (new.incarnation, new.state) > *old
}

impl<P: Clone + Eq + Hash + Debug> MemberList<P> {
    /// The list of node `me`, started at `incarnation` (a node that restarts must start higher
    /// than before, e.g. from the clock, so that its new life overrides its failure).
    pub fn new(me: P, incarnation: u32, config: ListConfig) -> MemberList<P> {
        let mut digest = Digest::empty();
        digest.toggle(&me, incarnation, MemberState::Joined);
        let live_digest = id_hash(&me);
        MemberList {
            me: Member {
                id: me,
                incarnation,
                state: MemberState::Joined,
            },
            config,
            members: HashMap::new(),
            suspicions: HashMap::new(),
            live_digest,
            digest,
        }
    }

    /// The list's [`Digest`]: what a neighbour compares with its own before anything else
    /// travels.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The entries (this node's included) in the buckets of `mask` (see [`Digest::differs`]),
    /// as updates: what a neighbour whose digest differs there is sent.
    pub fn snapshot_of(&self, mask: u64) -> Vec<Update<P>> {
        self.members()
            .filter(|m| mask & (1 << bucket_of(id_hash(&m.id))) != 0)
            .map(|member| Update {
                member,
                reporter: None,
            })
            .collect()
    }

    /// XOR of the id hashes of the members believed up (joined or suspected), this node
    /// included, kept up to date with every change: two lists with the same live members have
    /// the same value (see [`live_digest_of`]).
    pub fn live_digest(&self) -> u64 {
        self.live_digest
    }

    /// Sets another member's entry, keeping the digests in step.
    fn set(&mut self, id: P, incarnation: u32, state: MemberState) {
        self.digest.toggle(&id, incarnation, state);
        // Removed first: the key is replaced too, and with it what the id carries beside
        // itself (a member's address, which may change with a restart).
        let old = self.members.remove(&id);
        self.members.insert(id.clone(), (incarnation, state));
        if let Some((i, s)) = old {
            self.digest.toggle(&id, i, s);
        }
        if old.is_some_and(|(_, s)| is_up(s)) != is_up(state) {
            self.live_digest ^= id_hash(&id);
        }
    }

    /// Sets this node's own entry, keeping the digests in step.
    fn set_me(&mut self, incarnation: u32, state: MemberState) {
        self.digest
            .toggle(&self.me.id, self.me.incarnation, self.me.state);
        if is_up(self.me.state) != is_up(state) {
            self.live_digest ^= id_hash(&self.me.id);
        }
        self.me.incarnation = incarnation;
        self.me.state = state;
        self.digest.toggle(&self.me.id, incarnation, state);
    }

    /// This node's own entry: what it announces when it joins.
    pub fn me(&self) -> Update<P> {
        Update {
            member: self.me.clone(),
            reporter: None,
        }
    }

    /// Every member known, this node included.
    pub fn members(&self) -> impl Iterator<Item = Member<P>> + '_ {
        let others = self
            .members
            .iter()
            .map(|(id, (incarnation, state))| Member {
                id: id.clone(),
                incarnation: *incarnation,
                state: *state,
            });
        std::iter::once(self.me.clone()).chain(others)
    }

    /// What this node knows of `id`.
    pub fn get(&self, id: &P) -> Option<Member<P>> {
        if *id == self.me.id {
            return Some(self.me.clone());
        }
        let (incarnation, state) = self.members.get(id)?;
        Some(Member {
            id: id.clone(),
            incarnation: *incarnation,
            state: *state,
        })
    }

    /// The members believed up (joined or suspected), this node included.
    pub fn live(&self) -> impl Iterator<Item = &P> {
        let up = |s: &MemberState| matches!(s, MemberState::Joined | MemberState::Suspected);
        let others = self.members.iter().filter(move |(_, (_, s))| up(s));
        let me = up(&self.me.state).then_some(&self.me.id);
        me.into_iter().chain(others.map(|(id, _)| id))
    }

    /// Everything known, as updates: the state a joining node is given.
    pub fn snapshot(&self) -> Vec<Update<P>> {
        self.members()
            .map(|member| Update {
                member,
                reporter: None,
            })
            .collect()
    }

    /// Merges an update that arrived (or that this node made); what this node must broadcast
    /// in answer (a refutation) goes to `spread`, what changed for the application to `events`.
    /// Returns whether the update was news here (it changed an entry or added a confirmation
    /// to a suspicion): what a node that relays updates passes on, and nothing else.
    pub fn merge(
        &mut self,
        update: Update<P>,
        now: Instant,
        spread: &mut Vec<Update<P>>,
        events: &mut Vec<MemberEvent<P>>,
    ) -> bool {
        let Update { member, reporter } = update;
        if member.id == self.me.id {
            let accuses = matches!(member.state, MemberState::Suspected | MemberState::Failed);
            if accuses && member.incarnation >= self.me.incarnation {
                // Alive after all: a new incarnation overrides the suspicion everywhere.
                self.set_me(member.incarnation + 1, self.me.state);
                spread.push(self.me());
            }
            return false;
        }
        let id = member.id.clone();
        let known = self.members.get(&id);
        if known.is_none() && self.len() >= self.config.max_members {
            return false;
        }
        let changes = known.is_none_or(|old| overrides(&member, old));
        if member.state == MemberState::Suspected {
            let same =
                known.is_some_and(|old| *old == (member.incarnation, MemberState::Suspected));
            if same || changes {
                let suspicion = self.suspicions.entry(id.clone()).or_insert(Suspicion {
                    since: now,
                    first: None,
                    others: Vec::new(),
                });
                let before = suspicion.reporters();
                if let Some(r) = &reporter {
                    suspicion.add(r.clone());
                }
                let confirmed = suspicion.reporters() > before;
                if suspicion.reporters() >= self.config.confirmations {
                    self.fail(id.clone(), member.incarnation, events);
                    return true;
                }
                if !changes {
                    return confirmed;
                }
            }
        }
        if !changes {
            return false;
        }
        if member.state != MemberState::Suspected {
            self.suspicions.remove(&id);
        }
        self.set(id, member.incarnation, member.state);
        events.push(MemberEvent { member });
        true
    }

    /// Members held, this node included.
    pub fn len(&self) -> usize {
        self.members.len() + 1
    }

    /// Never: a list holds at least its own node.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// This node lost its link to `peer` (or could not reach it): it suspects it, and its
    /// suspicion goes to `spread` for the others to count.
    pub fn unreachable(
        &mut self,
        peer: &P,
        now: Instant,
        spread: &mut Vec<Update<P>>,
        events: &mut Vec<MemberEvent<P>>,
    ) {
        let Some(&(incarnation, state)) = self.members.get(peer) else {
            return;
        };
        if state != MemberState::Joined && state != MemberState::Suspected {
            return;
        }
        let update = Update {
            member: Member {
                id: peer.clone(),
                incarnation,
                state: MemberState::Suspected,
            },
            reporter: Some(self.me.id.clone()),
        };
        spread.push(update.clone());
        self.merge(update, now, spread, events);
    }

    /// Suspicions without enough confirmations fail once their timeout passes.
    pub fn tick(&mut self, now: Instant, events: &mut Vec<MemberEvent<P>>) {
        let timeout = self.config.suspect_timeout;
        let due: Vec<P> = self
            .suspicions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) >= timeout)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            let incarnation = self.members.get(&p).map_or(0, |(i, _)| *i);
            self.fail(p, incarnation, events);
        }
    }

    /// This node leaves: what to tell the others.
    pub fn leave(&mut self) -> Update<P> {
        self.set_me(self.me.incarnation, MemberState::Left);
        self.me()
    }

    fn fail(&mut self, id: P, incarnation: u32, events: &mut Vec<MemberEvent<P>>) {
        self.suspicions.remove(&id);
        let member = Member {
            id: id.clone(),
            incarnation,
            state: MemberState::Failed,
        };
        if self
            .members
            .get(&id)
            .is_some_and(|old| !overrides(&member, old))
        {
            return;
        }
        self.set(id, incarnation, MemberState::Failed);
        events.push(MemberEvent { member });
    }
}
