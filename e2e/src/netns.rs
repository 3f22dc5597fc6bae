//! [`HostNetwork`]: separate "hosts" on one machine — one network namespace per host, joined by
//! a bridge — and network partitions between them, made with nftables rules inside the hosts.
//!
//! This module owns only the network: namespaces, links, addresses, `/etc/netns/NAME/hosts` and
//! the partition rules. Running cluster members on the hosts is [`crate::host_cluster`]'s job.
//!
//! Layout of a network with reserved subnet `10.77.S.0/24` (S unique among running tests):
//!
//! ```text
//!   root namespace: fkvS-r 10.77.S.254 ──┐
//!   fkv-e2e-S-sw:   bridge br0 ──────────┼── s0 ── eth0 10.77.S.1 in fkv-e2e-S-h0 ("m1")
//!                                        ├── s1 ── eth0 10.77.S.2 in fkv-e2e-S-h1 ("m2")
//!                                        └── ...
//! ```
//!
//! The bridge lives in a namespace of its own, so the root namespace's firewall (which may filter
//! bridged traffic) never sees member traffic; the root namespace's one address on the bridge lets
//! the test process reach every host directly. Partition rules only ever name hosts' addresses,
//! so the test process keeps reaching every member whatever the partition.
//!
//! Every host gets `/etc/netns/<namespace>/hosts`, which `ip netns exec` mounts over `/etc/hosts`,
//! so programs on the hosts resolve the names `m1`, `m2`, ... Dropping the network deletes the
//! namespaces (and with them every link), the root link and the hosts files; a subnet is reserved
//! with a lock file that dies with the test process, and leftovers of a test that was killed
//! before its `Drop` ran are deleted when their subnet is next reserved.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use rand::Rng;

/// Third octets of the `10.77.S.0/24` subnets handed to networks.
const SUBNETS: std::ops::RangeInclusive<u8> = 1..=250;

/// The root namespace's address on every network: `10.77.S.254`.
const ROOT_HOST_OCTET: u8 = 254;

/// Name of the nftables table that holds a host's partition rules.
const PARTITION_TABLE: &str = "ferrokv_e2e_partition";

/// A set of hosts on one bridge. See the module documentation.
#[derive(Debug)]
pub struct HostNetwork {
    subnet: u8,
    hosts: usize,
    /// Hosts that currently have partition rules.
    partitioned: Vec<bool>,
    /// Holding the open file holds the subnet's `flock`.
    _lock: File,
}

impl HostNetwork {
    /// Creates `hosts` hosts on a fresh bridge.
    pub fn create(hosts: usize) -> anyhow::Result<HostNetwork> {
        assert!(
            (1..ROOT_HOST_OCTET as usize).contains(&hosts),
            "a network has 1 to 253 hosts"
        );
        let (subnet, lock) = reserve_subnet()?;
        let network = HostNetwork {
            subnet,
            hosts,
            partitioned: vec![false; hosts],
            _lock: lock,
        };
        // Leftovers of a killed test that held this subnet before.
        network.delete_everything();
        // From here on `Drop` undoes whatever part of the set-up succeeded.
        network.build()?;
        Ok(network)
    }

    fn build(&self) -> anyhow::Result<()> {
        let switch = self.switch_namespace();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;

        let hosts_file = self.hosts_file();
        for i in 0..self.hosts {
            let namespace = self.namespace(i);
            let port = format!("s{i}");
            ip(&["netns", "add", &namespace])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &namespace,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            let address = format!("{}/24", self.address(i));
            ip(&["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            let dir = netns_etc_dir(&namespace);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::write(dir.join("hosts"), &hosts_file)
                .with_context(|| format!("writing {}/hosts", dir.display()))?;
        }

        let root_link = self.root_link();
        ip(&[
            "link", "add", &root_link, "type", "veth", "peer", "name", "root", "netns", &switch,
        ])?;
        ip(&["-n", &switch, "link", "set", "root", "master", "br0", "up"])?;
        let address = format!("{}/24", self.root_address());
        ip(&["addr", "add", &address, "dev", &root_link])?;
        ip(&["link", "set", &root_link, "up"])?;
        Ok(())
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts
    }

    /// Whether the network has no hosts (never true).
    pub fn is_empty(&self) -> bool {
        self.hosts == 0
    }

    /// Host `i`'s network namespace, e.g. `fkv-e2e-17-h0`.
    pub fn namespace(&self, i: usize) -> String {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        format!("fkv-e2e-{}-h{i}", self.subnet)
    }

    /// Host `i`'s name in every host's `/etc/hosts`: `m1` for host 0, `m2` for host 1, ...
    pub fn host_name(&self, i: usize) -> String {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        format!("m{}", i + 1)
    }

    /// Host `i`'s address, `10.77.S.<i + 1>`.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        Ipv4Addr::new(10, 77, self.subnet, i as u8 + 1)
    }

    /// Host `i`'s `/etc/hosts` as its programs see it. Rewriting the file in place (same inode)
    /// changes what programs running there resolve; replacing it does not.
    pub fn hosts_path(&self, i: usize) -> PathBuf {
        netns_etc_dir(&self.namespace(i)).join("hosts")
    }

    /// The root namespace's address on the bridge, from which the test process talks to hosts.
    pub fn root_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, ROOT_HOST_OCTET)
    }

    /// A command that runs `program` on host `i` (`ip netns exec <namespace> <program>`), where
    /// the host names resolve. `ip netns exec` execs the program, so the child's pid is the
    /// program's own.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(i)])
            .arg(program);
        command
    }

    /// Cuts the network into `groups`: every host drops all traffic to and from the hosts of
    /// other groups, in both directions. A host in no group is cut off from every other host.
    /// Replaces any earlier partition. The test process (the root address) reaches every host.
    pub fn partition(&mut self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let mut group_of = vec![None; self.hosts];
        for (g, group) in groups.iter().enumerate() {
            for &host in *group {
                assert!(host < self.hosts, "host {host} of {}", self.hosts);
                assert!(group_of[host].is_none(), "host {host} is in two groups");
                group_of[host] = Some(g);
            }
        }
        self.heal()?;
        for host in 0..self.hosts {
            let blocked: Vec<String> = (0..self.hosts)
                .filter(|&other| other != host)
                .filter(|&other| group_of[host].is_none() || group_of[other] != group_of[host])
                .map(|other| self.address(other).to_string())
                .collect();
            if blocked.is_empty() {
                continue;
            }
            let set = blocked.join(", ");
            let rules = format!(
                "table inet {PARTITION_TABLE} {{\n\
                 \tchain input {{ type filter hook input priority 0; policy accept; \
                 ip saddr {{ {set} }} drop; }}\n\
                 \tchain output {{ type filter hook output priority 0; policy accept; \
                 ip daddr {{ {set} }} drop; }}\n\
                 }}\n"
            );
            self.partitioned[host] = true;
            self.nft_script(host, &rules)?;
        }
        Ok(())
    }

    /// Drops every packet sent from `from` to `to` for each `(from, to)` in `links`, on the
    /// receiving host; the other direction of a link is untouched unless listed too. Replaces any
    /// earlier partition. One-way drops and a bridge host that sees both sides of a split are
    /// made with this; [`partition`](Self::partition) covers the symmetric cases.
    pub fn drop_links(&mut self, links: &[(usize, usize)]) -> anyhow::Result<()> {
        self.heal()?;
        for host in 0..self.hosts {
            let senders: Vec<String> = links
                .iter()
                .filter(|&&(from, to)| to == host && from != host)
                .map(|&(from, _)| {
                    assert!(from < self.hosts, "host {from} of {}", self.hosts);
                    self.address(from).to_string()
                })
                .collect();
            if senders.is_empty() {
                continue;
            }
            let set = senders.join(", ");
            let rules = format!(
                "table inet {PARTITION_TABLE} {{\n\
                 \tchain input {{ type filter hook input priority 0; policy accept; \
                 ip saddr {{ {set} }} drop; }}\n\
                 }}\n"
            );
            self.partitioned[host] = true;
            self.nft_script(host, &rules)?;
        }
        Ok(())
    }

    /// Cuts host `i` off from every other host.
    pub fn isolate(&mut self, i: usize) -> anyhow::Result<()> {
        let others: Vec<usize> = (0..self.hosts).filter(|&h| h != i).collect();
        self.partition(&[&[i], &others])
    }

    /// Removes every partition rule: all hosts reach each other again.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for host in 0..self.hosts {
            if self.partitioned[host] {
                self.nft_script(host, &format!("delete table inet {PARTITION_TABLE}\n"))?;
                self.partitioned[host] = false;
            }
        }
        Ok(())
    }

    fn nft_script(&self, host: usize, script: &str) -> anyhow::Result<()> {
        let mut child = self
            .command(host, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning nft")?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes())
            .context("writing nft's script")?;
        let output = child.wait_with_output().context("waiting for nft")?;
        if !output.status.success() {
            bail!(
                "nft on {} failed ({}): {}\nscript:\n{script}",
                self.namespace(host),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn switch_namespace(&self) -> String {
        format!("fkv-e2e-{}-sw", self.subnet)
    }

    fn root_link(&self) -> String {
        format!("fkv{}-r", self.subnet)
    }

    fn hosts_file(&self) -> String {
        let mut text = String::from("127.0.0.1\tlocalhost\n");
        for i in 0..self.hosts {
            text.push_str(&format!("{}\t{}\n", self.address(i), self.host_name(i)));
        }
        text
    }

    /// Deletes every namespace, link and file a network on this subnet may have made, whether
    /// it exists or not. Deleting a namespace deletes the links in it (and their veth peers);
    /// processes still inside keep it alive until they exit, so stop them first.
    fn delete_everything(&self) {
        let prefix = format!("fkv-e2e-{}-", self.subnet);
        for namespace in existing_namespaces() {
            if namespace.starts_with(&prefix) {
                let _ = ip(&["netns", "del", &namespace]);
                let _ = fs::remove_dir_all(netns_etc_dir(&namespace));
            }
        }
        for i in 0..self.hosts {
            let _ = fs::remove_dir_all(netns_etc_dir(&self.namespace(i)));
        }
        if link_exists(&self.root_link()) {
            let _ = ip(&["link", "del", &self.root_link()]);
        }
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        self.delete_everything();
    }
}

/// Runs `ip <args>`, failing with its standard error.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !output.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn existing_namespaces() -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The directory `ip netns exec` takes per-namespace `/etc` files from.
fn netns_etc_dir(namespace: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(namespace)
}

/// Reserves a third octet S such that no other test holds `10.77.S.0/24` and nothing in the root
/// namespace routes it already.
fn reserve_subnet() -> anyhow::Result<(u8, File)> {
    let lock_dir = std::env::temp_dir().join("ferrokv-e2e-netns");
    fs::create_dir_all(&lock_dir)
        .with_context(|| format!("creating subnet lock directory {}", lock_dir.display()))?;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let subnet = rng.gen_range(SUBNETS);
        let lock_path = lock_dir.join(format!("{subnet}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: flock on a file descriptor we own; LOCK_NB makes it return at once.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let routed = Command::new("ip")
            .args([
                "-4",
                "route",
                "show",
                "to",
                "match",
                &format!("10.77.{subnet}.1"),
            ])
            .output()
            .context("running ip route")?;
        // Only the default route may match: anything more specific is someone else's network.
        let taken = String::from_utf8_lossy(&routed.stdout)
            .lines()
            .any(|line| !line.starts_with("default"));
        if !taken {
            return Ok((subnet, lock));
        }
    }
    bail!("no free 10.77.S.0/24 subnet after 1000 attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_and_one_way_drops_cut_hosts_and_heal_reconnects_them() {
        let mut network = HostNetwork::create(3).expect("create a 3-host network");
        // A TCP connection to a closed port is refused at once by a reachable host, and gets
        // no answer (or EPERM from the sender's own rules) from a partitioned one.
        let reaches = |network: &HostNetwork, from: usize, to: usize| {
            let output = network
                .command(from, "timeout")
                .args(["2", "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{}/9", network.host_name(to)))
                .output()
                .expect("run bash");
            String::from_utf8_lossy(&output.stderr).contains("Connection refused")
        };
        assert!(reaches(&network, 0, 1), "m1 reaches m2 by name");
        network.partition(&[&[0], &[1, 2]]).expect("partition");
        assert!(!reaches(&network, 0, 1));
        assert!(!reaches(&network, 2, 0));
        assert!(reaches(&network, 1, 2));
        network.heal().expect("heal");
        assert!(reaches(&network, 0, 2));
        // One way: 0's packets to 1 are dropped, on 1 only. A TCP handshake needs both
        // directions, so neither connects; the rules show that only 1 drops anything.
        network.drop_links(&[(0, 1)]).expect("one-way drop");
        assert!(!reaches(&network, 0, 1));
        assert!(!reaches(&network, 1, 0));
        assert!(reaches(&network, 0, 2));
        assert!(reaches(&network, 2, 1));
        let tables = |host: usize| {
            let output = network
                .command(host, "nft")
                .args(["list", "tables"])
                .output()
                .expect("run nft");
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        assert!(tables(1).contains(PARTITION_TABLE));
        assert!(!tables(0).contains(PARTITION_TABLE));
        network.heal().expect("heal");
        assert!(reaches(&network, 0, 1));
        let namespace = network.namespace(0);
        drop(network);
        assert!(!existing_namespaces().contains(&namespace));
        assert!(!netns_etc_dir(&namespace).exists());
    }
}
