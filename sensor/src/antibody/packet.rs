//! Packet sockets opened before a quarantine: they send and receive below
//! the IP stack, where the kernel's quarantine filters do not reach, and
//! the `socket()` guard only stops new ones. The processes of the pod that
//! hold one are killed when the pod is isolated.
use std::collections::HashSet;
use std::path::Path;

/// Kills the processes under cgroup directory `dir` (and its children) that
/// hold a packet socket; returns their pids.
pub fn cut(dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    for pid in procs(dir) {
        let inodes = packet_inodes(pid);
        if inodes.is_empty() || !holds_one(pid, &inodes) {
            continue;
        }
        // SAFETY: kill(2) on a pid read from the pod's cgroup just now.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
            killed.push(pid);
        }
    }
    killed
}

/// Every pid in the cgroup tree at `dir`.
fn procs(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth >= 8 {
            continue;
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out
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

/// Whether one of `pid`'s file descriptors is one of those sockets.
fn holds_one(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| {
            t.to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
                .is_some_and(|n: u64| inodes.contains(&n))
        })
    })
}
