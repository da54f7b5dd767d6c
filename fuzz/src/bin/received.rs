//! Bytes from peers through frame decoding, the message manager and the broadcast engine
//! (`grpc_gossip::fuzzing::run`): any panic is a broken bound or a bug.

fn main() {
    afl::fuzz!(|script: &[u8]| {
        grpc_gossip::fuzzing::run(script);
    });
}
