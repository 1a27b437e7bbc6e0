//! The processes of a pod and the sockets they hold, read from the cgroup
//! tree and `/proc`: what the antibodies act on when a pod is isolated.
use std::collections::HashSet;
use std::path::Path;

/// Every pid in the cgroup tree at `dir` (bounded in depth: a pod that makes
/// cgroups cannot make the walk endless).
pub fn in_cgroup(dir: &Path) -> Vec<u32> {
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

/// SIGKILLs `pid`; false when it could not. A process that is already gone
/// is no news, but a refusal (EPERM: the daemon lacks CAP_KILL for another
/// user's process) leaves an attacker running, so it is logged.
pub fn sigkill(pid: u32) -> bool {
    signal(pid, libc::SIGKILL)
}

/// Sends `sig` to `pid`; false when it is gone or cannot be signalled.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) takes any pid; the callers name one they just read.
    if unsafe { libc::kill(pid as i32, sig) } == 0 {
        return true;
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ESRCH) {
        tracing::warn!(pid, sig, %err, "could not signal a process (CAP_KILL missing?)");
    }
    false
}

/// Inodes of the sockets `pid` holds open (`/proc/PID/fd/N` →
/// `socket:[INODE]`). Empty when the process is gone.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}
