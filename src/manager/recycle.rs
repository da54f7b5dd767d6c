//! Buffers of reassembled messages, used again.
//!
//! A chunked message is put together in one buffer of its full size. A fresh buffer that
//! large is mapped anew by the allocator (glibc maps blocks over its mmap threshold on their
//! own and unmaps them when freed), so the kernel faults in and zeroes every page of it while
//! the chunks are copied in. On 64 MiB messages that cost more than the copy itself, on the
//! manager thread (docs/performance.md, "Large messages: buffers used again").
//!
//! So a delivered message's payload is a `Bytes` that owns its buffer, and when the
//! application drops the last reference the buffer comes back here; the next message of about
//! the same size is put together in it, on pages that are already there.
//!
//! Recycling never raises the memory reassembly holds at its peak: a returned buffer is kept
//! only while the buffers waiting here plus those of messages being put together stay within
//! the most that messages being put together have held at once lately, and those waiting
//! within `cap`; otherwise it is freed, as it would have been without recycling. A buffer that waits longer
//! than [`IDLE`] is freed at the next [`Recycler::trim`], and after an idle spell the peak is
//! forgotten, so an idle node gives the memory back.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

/// How long a returned buffer waits for a message before it is freed.
pub(super) const IDLE: Duration = Duration::from_secs(2);

/// The most room a buffer may have beyond the message put into it, as a fraction of the
/// message (1/8): a much larger buffer would hold memory the message does not need.
const SLACK_DIVISOR: usize = 8;

/// Buffers returned by delivered payloads, waiting to be used again. See the module docs.
#[derive(Debug)]
pub(super) struct Recycler {
    shelf: Arc<Mutex<Shelf>>,
}

#[derive(Debug)]
struct Shelf {
    /// Free buffers (empty, with their capacity) and when each came back.
    free: Vec<(Vec<u8>, Instant)>,
    /// Capacity of the buffers in `free`, in bytes.
    bytes: usize,
    /// Capacity of the buffers taken for messages being put together now.
    in_use: usize,
    /// The most `in_use` has been since the last idle spell.
    peak: usize,
    /// When a buffer was last taken.
    last_take: Option<Instant>,
    cap: usize,
}

/// A payload's buffer that goes back to its shelf when the last `Bytes` of it is dropped.
struct Returning {
    buf: Vec<u8>,
    shelf: Weak<Mutex<Shelf>>,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // The manager (and its shelf) may be gone: then the buffer is simply freed.
        if let Some(shelf) = self.shelf.upgrade() {
            shelf
                .lock()
                .put(std::mem::take(&mut self.buf), Instant::now());
        }
    }
}

impl Shelf {
    fn put(&mut self, mut buf: Vec<u8>, now: Instant) {
        let size = buf.capacity();
        let waiting = self.bytes + size;
        if size == 0 || waiting > self.cap || waiting + self.in_use > self.peak {
            return;
        }
        buf.clear();
        self.bytes += size;
        self.free.push((buf, now));
    }
}

impl Recycler {
    /// A recycler that keeps at most `cap` bytes of free buffers.
    pub(super) fn new(cap: usize) -> Recycler {
        Recycler {
            shelf: Arc::new(Mutex::new(Shelf {
                free: Vec::new(),
                bytes: 0,
                in_use: 0,
                peak: 0,
                last_take: None,
                cap,
            })),
        }
    }

    /// An empty buffer with room for `len` bytes, for a message to be put together in: a
    /// returned one that fits (the smallest with at most 1/8 more room), or a new one.
    pub(super) fn take(&self, len: usize, now: Instant) -> Vec<u8> {
        let mut shelf = self.shelf.lock();
        let most = len.saturating_add(len / SLACK_DIVISOR);
        let best = (shelf.free.iter().enumerate())
            .filter(|(_, (buf, _))| (len..=most).contains(&buf.capacity()))
            .min_by_key(|(_, (buf, _))| buf.capacity())
            .map(|(i, _)| i);
        let buf = match best {
            Some(i) => {
                let (buf, _) = shelf.free.swap_remove(i);
                shelf.bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(len),
        };
        shelf.in_use += buf.capacity();
        shelf.peak = shelf.peak.max(shelf.in_use);
        shelf.last_take = Some(now);
        buf
    }

    /// A message put together in `buf` (from [`take`](Recycler::take)), as a payload whose
    /// buffer comes back here once the payload is dropped.
    pub(super) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        self.shelf.lock().in_use -= buf.capacity();
        Bytes::from_owner(Returning {
            buf,
            shelf: Arc::downgrade(&self.shelf),
        })
    }

    /// Gives back a buffer from [`take`](Recycler::take) whose message was abandoned.
    pub(super) fn put_back(&self, buf: Vec<u8>, now: Instant) {
        let mut shelf = self.shelf.lock();
        shelf.in_use -= buf.capacity();
        shelf.put(buf, now);
    }

    /// Frees the buffers that came back more than [`IDLE`] before `now`, and forgets the
    /// peak if no buffer was taken in that time.
    pub(super) fn trim(&self, now: Instant) {
        let mut shelf = self.shelf.lock();
        let before = shelf.free.len();
        shelf
            .free
            .retain(|(_, at)| now.saturating_duration_since(*at) < IDLE);
        if shelf.free.len() != before {
            shelf.bytes = shelf.free.iter().map(|(buf, _)| buf.capacity()).sum();
        }
        if (shelf.last_take).is_none_or(|at| now.saturating_duration_since(at) >= IDLE) {
            shelf.peak = shelf.in_use;
        }
    }

    /// Bytes of free buffers held now.
    pub(super) fn held_bytes(&self) -> usize {
        self.shelf.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payloads_buffer_comes_back_when_its_last_reference_drops_and_is_used_again() {
        let r = Recycler::new(1 << 20);
        let now = Instant::now();
        let mut buf = r.take(1000, now);
        buf.extend_from_slice(&[7; 1000]);
        let at = buf.as_ptr();
        let payload = r.freeze(buf);
        let part = payload.slice(10..20);
        drop(payload);
        assert_eq!(r.held_bytes(), 0, "a slice of it is still alive");
        assert_eq!(&part[..], &[7; 10]);
        drop(part);
        assert_eq!(r.held_bytes(), 1000);
        let again = r.take(1000, now);
        assert_eq!(again.as_ptr(), at);
        assert!(
            again.is_empty(),
            "no bytes of the old message are left in it"
        );
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn only_a_buffer_of_about_the_right_size_is_used_again() {
        let r = Recycler::new(1 << 20);
        let now = Instant::now();
        let taken: Vec<Vec<u8>> = [1000, 4000, 10_000].map(|n| r.take(n, now)).into();
        for buf in taken {
            r.put_back(buf, now);
        }
        assert_eq!(r.held_bytes(), 15_000);
        // Too small, and too large (more than 1/8 over): new buffers.
        let (a, b) = (r.take(1001, now), r.take(3000, now));
        assert_eq!((a.capacity(), b.capacity()), (1001, 3000));
        assert_eq!(r.held_bytes(), 15_000);
        // The smallest that fits.
        assert_eq!(r.take(990, now).capacity(), 1000);
        assert_eq!(r.take(3600, now).capacity(), 4000);
        assert_eq!(r.held_bytes(), 10_000);
    }

    #[test]
    fn what_waits_never_takes_reassembly_past_its_peak() {
        let r = Recycler::new(1 << 20);
        let now = Instant::now();
        // Two messages at once: the peak is 2000.
        let (one, two) = (r.take(1000, now), r.take(1000, now));
        let one = r.freeze(one);
        // A third starts before the application drops the first: 2000 in use again.
        let three = r.take(1000, now);
        drop(one);
        assert_eq!(
            r.held_bytes(),
            0,
            "keeping it would hold 3000, more than the peak"
        );
        r.put_back(two, now);
        r.put_back(three, now);
        assert_eq!(r.held_bytes(), 2000);
    }

    #[test]
    fn the_shelf_holds_at_most_its_cap_and_frees_what_waits_too_long() {
        let r = Recycler::new(2500);
        let t0 = Instant::now();
        let taken: Vec<Vec<u8>> = (0..3).map(|_| r.take(1000, t0)).collect();
        for (buf, at) in taken.into_iter().zip([t0, t0 + IDLE / 2, t0 + IDLE / 2]) {
            r.put_back(buf, at);
        }
        assert_eq!(r.held_bytes(), 2000, "the third would go over the cap");
        r.trim(t0 + IDLE);
        assert_eq!(r.held_bytes(), 1000);
        r.trim(t0 + IDLE + IDLE / 2);
        assert_eq!(r.held_bytes(), 0);
        // A delivery the application holds over an idle spell is not kept: the peak is
        // forgotten.
        let mut buf = r.take(500, t0 + IDLE * 3);
        buf.push(1);
        let held = r.freeze(buf);
        r.trim(t0 + IDLE * 5);
        drop(held);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn a_payload_outliving_its_recycler_is_freed_with_it() {
        let r = Recycler::new(1 << 20);
        let mut buf = r.take(100, Instant::now());
        buf.extend_from_slice(&[1; 100]);
        let payload = r.freeze(buf);
        drop(r);
        assert_eq!(&payload[..], &[1; 100]);
        drop(payload);
    }
}
