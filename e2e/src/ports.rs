//! Loopback ports for test members, reserved so that tests running at the same time — threads of
//! one test binary and separate test processes alike — never hand one port to two servers.
//!
//! A port belongs to a [`ReservedPort`] while it holds an exclusive `flock(2)` on
//! `<temp dir>/ferrokv-e2e-ports/<port>.lock` and a trial bind of `127.0.0.1:<port>` succeeded.
//! The lock is released when the reservation is dropped (or its process dies), so a crashed test
//! never leaks ports. Ports are drawn from a range below Linux's default ephemeral range
//! (32768–60999), so outgoing connections of unrelated programs do not take them, and away from
//! the fixed ports of `scripts/cluster` (2379/2380, 22379/22380, 32379/32380) and `scripts/bench`
//! (12379–12580).

use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{bail, Context};
use rand::Rng;

/// Ports handed to test members come from this range.
const PORT_RANGE: std::ops::Range<u16> = 15000..20000;

/// How many random ports to try before giving up; the range is large, so running out means
/// something else is wrong (a full range, an unwritable lock directory).
const ATTEMPTS: usize = 1000;

/// A loopback TCP port that no other reservation holds until this one is dropped.
#[derive(Debug)]
pub struct ReservedPort {
    port: u16,
    /// Holding the open file holds the `flock`; closing it releases the port.
    _lock: File,
}

impl ReservedPort {
    /// Reserves a free port on 127.0.0.1.
    pub fn reserve() -> anyhow::Result<ReservedPort> {
        let lock_dir = lock_dir();
        fs::create_dir_all(&lock_dir)
            .with_context(|| format!("creating port lock directory {}", lock_dir.display()))?;
        let mut rng = rand::thread_rng();
        for _ in 0..ATTEMPTS {
            let port = rng.gen_range(PORT_RANGE);
            let lock_path = lock_dir.join(format!("{port}.lock"));
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .with_context(|| format!("opening {}", lock_path.display()))?;
            // SAFETY: flock on a file descriptor we own; LOCK_NB makes it return at once.
            let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if locked != 0 {
                continue;
            }
            // Another program (not using these locks) may be listening on the port already.
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(ReservedPort { port, _lock: lock });
            }
        }
        bail!(
            "no free port in {}..{} after {ATTEMPTS} attempts",
            PORT_RANGE.start,
            PORT_RANGE.end
        )
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, the form etcd's URL flags take.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `<scheme>://127.0.0.1:<port>`, e.g. `https` for a TLS port.
    pub fn url_with(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("ferrokv-e2e-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_reservations_never_share_a_port() {
        let reservations: Vec<ReservedPort> = (0..64)
            .map(|_| ReservedPort::reserve().expect("reserve"))
            .collect();
        let mut ports: Vec<u16> = reservations.iter().map(ReservedPort::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), reservations.len());
    }

    #[test]
    fn reserved_port_is_inside_the_test_range() {
        let reservation = ReservedPort::reserve().expect("reserve");
        assert!(PORT_RANGE.contains(&reservation.port()));
        assert_eq!(
            reservation.url(),
            format!("http://127.0.0.1:{}", reservation.port())
        );
    }
}
