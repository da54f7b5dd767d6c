//! The plain threads of a node: a joinable set, and the gate that pauses message readers.

use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::error::Error;

/// Every thread a node starts, so that shutdown can join them all.
#[derive(Default)]
pub(crate) struct ThreadSet {
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl ThreadSet {
    /// Starts a named thread and remembers it. Finished threads are forgotten on the way so the
    /// set stays as small as what is running.
    pub(crate) fn spawn(
        &self,
        name: String,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), Error> {
        let handle = std::thread::Builder::new().name(name).spawn(f)?;
        let mut handles = self.handles.lock();
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
        Ok(())
    }

    /// Joins every thread, including any started while joining.
    pub(crate) fn join_all(&self) {
        loop {
            let batch: Vec<JoinHandle<()>> = std::mem::take(&mut *self.handles.lock());
            if batch.is_empty() {
                return;
            }
            for h in batch {
                if h.join().is_err() {
                    log::error!("a node thread panicked");
                }
            }
        }
    }

    /// Threads started and not yet known to have finished.
    pub(crate) fn live(&self) -> usize {
        let mut handles = self.handles.lock();
        handles.retain(|h| !h.is_finished());
        handles.len()
    }
}

/// Lets the manager pause the readers of incoming payloads while the application's delivery
/// queue is full: gRPC's flow control then slows the senders down, instead of memory growing.
pub(crate) struct ReadGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GateState {
    Open,
    Closed,
    Released,
}

impl Default for ReadGate {
    fn default() -> Self {
        ReadGate {
            state: Mutex::new(GateState::Open),
            changed: Condvar::new(),
        }
    }
}

impl ReadGate {
    /// Blocks while the gate is closed.
    pub(crate) fn wait_open(&self) {
        let mut s = self.state.lock();
        while *s == GateState::Closed {
            self.changed.wait(&mut s);
        }
    }

    /// Opens or closes the gate (no effect once released).
    pub(crate) fn set_open(&self, open: bool) {
        let mut s = self.state.lock();
        if *s != GateState::Released {
            *s = if open {
                GateState::Open
            } else {
                GateState::Closed
            };
            self.changed.notify_all();
        }
    }

    /// Opens the gate for good (shutdown).
    pub(crate) fn release(&self) {
        *self.state.lock() = GateState::Released;
        self.changed.notify_all();
    }
}
