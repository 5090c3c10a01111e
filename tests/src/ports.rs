//! Free loopback ports for the components the harness starts.
//!
//! A port must be chosen before the component binds it (it is written in
//! the component's config or flags), so it is free when chosen and bound a
//! moment later. Two things can take it in between:
//! - the kernel: binding port 0 gives a port from its ephemeral range, which
//!   it hands to the very next bind of port 0 (a mock model, an outgoing
//!   connection) once released. So ports come from below that range, which
//!   the kernel never hands out by itself;
//! - another harness or test process choosing at the same moment (the
//!   loopback world and the node's world start side by side). So each
//!   process owns blocks of ports, each held with an exclusive machine lock
//!   ([`crate::machine_lock::try_lock`]) until the process exits, and chooses only within its own blocks.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpListener;
use std::sync::Mutex;

use nix::fcntl::Flock;

use crate::HarnessError;
use crate::machine_lock::{lock_path, try_lock};

/// The ports handed out: above the node's own (the kubelet and kube-proxy
/// listen on 10248-10259), below the NodePort range (30000-32767) and the
/// kernel's ephemeral range.
const LOWEST: u16 = 20_000;
const HIGHEST: u16 = 29_999;
/// Ports per block a process owns.
const BLOCK: u16 = 100;

/// What this process owns and has handed out.
struct Owned {
    /// The blocks' first ports, and their locks (held for the process).
    blocks: Vec<(u16, Flock<File>)>,
    handed_out: BTreeSet<u16>,
}

static OWNED: Mutex<Owned> = Mutex::new(Owned {
    blocks: Vec::new(),
    handed_out: BTreeSet::new(),
});

/// A port on 127.0.0.1 that nothing listens on, in 20000-29999 (below the
/// kernel's ephemeral range), in a block no other process of this project
/// owns, never handed out before by this process.
pub fn free_port() -> Result<u16, HarnessError> {
    let mut owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let candidates: Vec<u16> = owned
            .blocks
            .iter()
            .flat_map(|(first, _)| *first..first.saturating_add(BLOCK))
            .collect();
        for port in candidates {
            if owned.handed_out.contains(&port) {
                continue;
            }
            // Something outside this project may still listen there.
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                owned.handed_out.insert(port);
                return Ok(port);
            }
        }
        let block = claim_block(owned.blocks.iter().map(|(first, _)| *first))?;
        owned.blocks.push(block);
    }
}

/// Claims a block no other process holds, starting the search at a place
/// that differs per process.
fn claim_block(held: impl Iterator<Item = u16>) -> Result<(u16, Flock<File>), HarnessError> {
    let held: BTreeSet<u16> = held.collect();
    let highest = HIGHEST.min(ephemeral_start().saturating_sub(1));
    let count = (highest.saturating_sub(LOWEST).saturating_add(1) / BLOCK).max(1);
    let start = std::process::id() % u32::from(count);
    for i in 0..u32::from(count) {
        let Ok(index) = u16::try_from((start + i) % u32::from(count)) else {
            continue;
        };
        let first = LOWEST + index * BLOCK;
        if held.contains(&first) {
            continue;
        }
        if let Ok(lock) = try_lock(&lock_path(&format!("ports-{first}")))? {
            return Ok((first, lock));
        }
    }
    Err(HarnessError::io(
        "a free block of ports below the ephemeral range",
    )(std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// The first port of the kernel's ephemeral range (32768 when it cannot
/// be read, Linux's default).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|start| *start > LOWEST.saturating_add(1_000))
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(
            ports
                .iter()
                .all(|p| (LOWEST..=HIGHEST).contains(p) && *p < ephemeral_start())
        );
        // Each was free: it binds now.
        for port in &ports[..20] {
            TcpListener::bind(("127.0.0.1", *port)).unwrap();
        }
    }

    #[test]
    fn another_process_never_gets_a_block_this_one_holds() {
        let mine = free_port().unwrap();
        let first = LOWEST + (mine - LOWEST) / BLOCK * BLOCK;
        // Another process (a child: flock locks belong to the open file,
        // and a new open in another process conflicts) cannot take it.
        let path = lock_path(&format!("ports-{first}"));
        let status = std::process::Command::new("flock")
            .args(["--nonblock", "--exclusive"])
            .arg(&path)
            .arg("true")
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "{} was taken from this process",
            path.display()
        );
    }
}
