//! Packet sockets opened before a quarantine: they send and receive below
//! the IP stack, where the kernel's quarantine filters do not reach, and
//! the `socket()` guard only stops new ones. The processes of the pod that
//! hold one are killed when the pod is isolated.
use std::collections::HashSet;
use std::path::Path;

use super::procs;

/// Kills the processes under cgroup directory `dir` (and its children) that
/// hold a packet socket; returns their pids.
pub fn cut(dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    for pid in procs::in_cgroup(dir) {
        let packet = packet_inodes(pid);
        if packet.is_empty() || procs::socket_inodes(pid).is_disjoint(&packet) {
            continue;
        }
        if procs::sigkill(pid) {
            killed.push(pid);
        }
    }
    killed
}

/// Inodes of the packet sockets in `pid`'s network namespace
/// (`/proc/PID/net/packet`, whose last column is the inode).
fn packet_inodes(pid: u32) -> HashSet<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/packet")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}
