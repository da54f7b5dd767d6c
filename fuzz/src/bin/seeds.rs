//! Writes the seed scripts (`grpc_gossip::fuzzing::seeds`) into a corpus directory.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "corpus/received".into()),
    );
    std::fs::create_dir_all(&dir)?;
    for (name, script) in grpc_gossip::fuzzing::seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), script)?;
    }
    Ok(())
}
