//! Free loopback ports for the components the harness starts.
//!
//! A port must be chosen before the component binds it (it is written in
//! the component's config or flags), so it is free when chosen and bound a
//! moment later. Asking the kernel (binding port 0) gave a port from its
//! ephemeral range, which it hands to the very next bind of port 0 (a mock
//! model, an outgoing connection) once released: two tests running at once
//! collided that way. So ports come from below the ephemeral range, which
//! the kernel never hands out by itself, and no port is handed out twice by
//! one process.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::HarnessError;

/// The ports handed out: above the node's own (the kubelet and kube-proxy
/// listen on 10248-10259), below the NodePort range (30000-32767) and the
/// kernel's ephemeral range.
const LOWEST: u16 = 20_000;
const HIGHEST: u16 = 29_999;

/// The ports this process has handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Where the next search starts; seeded per process, so that two test
/// processes start in different places.
static CURSOR: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that nothing listens on, in 20000-29999 (and below
/// the kernel's ephemeral range), never handed out before by this process.
pub fn free_port() -> Result<u16, HarnessError> {
    let (lowest, highest) = (LOWEST, HIGHEST.min(ephemeral_start().saturating_sub(1)));
    let span = u32::from(highest.saturating_sub(lowest)).max(1);
    if CURSOR.load(Ordering::Relaxed) == 0 {
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
        let _ = CURSOR.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span.min(4096) {
        let offset = CURSOR.fetch_add(7919, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(u32::from(lowest) + offset) else {
            continue;
        };
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(HarnessError::io("a free port below the ephemeral range")(
        std::io::Error::from(std::io::ErrorKind::AddrInUse),
    ))
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
}
