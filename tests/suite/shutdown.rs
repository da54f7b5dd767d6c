//! Shutdown is clean: every pending message completes, nothing hangs, no thread is left; on
//! gRPC and on the in-memory network.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use grpc_gossip::{Error, FailReason, Message, Outcome};

on_both! {
    fn shutdown_while_sending_completes_everything(on) {
        let a = start("a", on);
        let b = start("b", on);
        connect(&a, &b);
        connect(&b, &a);
        let payload = Bytes::from(vec![0u8; 512 * 1024]);
        let sent = std::thread::scope(|s| {
            let sender = s.spawn(|| {
                let mut sent = 0;
                for i in 0..10_000 {
                    match a.send_message("b", Message::new(format!("{i}"), payload.clone())) {
                        Ok(_) => sent += 1,
                        Err(Error::Shutdown) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                sent
            });
            std::thread::sleep(Duration::from_millis(300));
            a.shutdown();
            sender.join().unwrap()
        });
        assert!(sent > 0);
        let done = collect(&a.completions(), sent);
        for c in &done {
            assert!(
                c.is_acked() || c.outcome == Outcome::Failed(FailReason::Shutdown),
                "{c:?}"
            );
        }
        assert_quiet(&a.completions());
        assert!(matches!(
            a.send_message("b", Message::new("x", "x")),
            Err(Error::Shutdown)
        ));
        a.shutdown(); // idempotent
    }
}

/// The original leaks a goroutine per stopped node that spins at 100% CPU. Ours leaves no
/// thread behind: count the process's threads around a whole node lifetime.
#[test]
fn no_thread_is_left_after_shutdown() {
    // The other tests of this binary start and stop threads too.
    if in_own_process("shutdown::no_thread_is_left_after_shutdown") {
        lifetimes_leave_no_thread(&factory());
    }
}

/// The same on the in-memory network, whose calls have no threads of their own.
#[test]
fn no_thread_is_left_after_shutdown_in_memory() {
    if in_own_process("shutdown::no_thread_is_left_after_shutdown_in_memory") {
        lifetimes_leave_no_thread(&grpc_gossip::MemoryNetwork::new());
    }
}

fn lifetimes_leave_no_thread(on: &dyn Transport) {
    // Warm up gRPC's own lazily started threads with one full cycle.
    let cycle = || {
        let a = start("a", on);
        let b = start("b", on);
        connect(&a, &b);
        connect(&b, &a);
        for i in 0..20 {
            a.send_message("b", Message::new(format!("{i}"), vec![0u8; 64 * 1024]))
                .unwrap();
        }
        collect(&a.completions(), 20);
        assert!(a.stream_threads() > 0);
        a.shutdown();
        b.shutdown();
        assert_eq!(a.stream_threads(), 0);
        assert_eq!(b.stream_threads(), 0);
    };
    cycle();
    std::thread::sleep(Duration::from_millis(200));
    let before = thread_count();
    for _ in 0..3 {
        cycle();
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = thread_count();
    assert!(
        after <= before,
        "threads before {before}, after 3 node lifetimes {after}"
    );
}
