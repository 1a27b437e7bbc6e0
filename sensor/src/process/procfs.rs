//! The start-up scan of /proc: processes older than the daemon get cache
//! entries (flag `procFS`) so that their children find a parent, and the
//! kernel gets their policy state so that matchBinaries and followChildren hold
//! for them too.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::export::event::Process;

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    /// Start time in `bpf_ktime_get_ns` nanoseconds (from clock ticks).
    pub ktime: u64,
    pub uid: u32,
    /// `/proc/PID/loginuid`.
    pub auid: u32,
    /// From `/proc/PID/status`.
    pub creds: Option<crate::export::creds::ProcessCredentials>,
    /// From `/proc/PID/ns`.
    pub ns: Option<crate::export::ns::Namespaces>,
    /// Its PID in its own PID namespace (the last of `NSpid`).
    pub nspid: u32,
    pub binary: String,
    pub args: Vec<String>,
    pub cwd: String,
    /// Its cgroup v2 id (0 when unknown).
    pub cgroup_id: u64,
}

/// The cgroup v2 id of a process: the inode of its directory in the tree.
fn cgroup_id(dir: &Path, cgroup_root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| std::fs::metadata(cgroup_root.join(p.trim_start_matches('/'))).ok())
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// `(ppid, starttime ticks)` from /proc/PID/stat; the comm field may hold
/// spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state): ppid is field 4, starttime field 22.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn uid_of(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn read_entry(dir: &Path, pid: u32, ns_per_tick: u64, cgroup_root: &Path) -> Option<ProcEntry> {
    // Kernel threads have no exe; they never exec and are not parents of
    // anything a policy matches.
    let binary = std::fs::read_link(dir.join("exe")).ok()?;
    let (ppid, ticks) = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let args = cmdline
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    let ns = crate::export::ns::Namespaces::from_proc(dir);
    // The credentials' user namespace is the process's, already read.
    let user_ns = ns
        .as_ref()
        .and_then(|n| n.user)
        .map(crate::export::creds::UserNamespace::of);
    Some(ProcEntry {
        pid,
        ppid,
        ktime: ticks * ns_per_tick,
        uid: uid_of(&status).unwrap_or(0),
        auid: std::fs::read_to_string(dir.join("loginuid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(crate::export::event::AUID_UNSET),
        creds: crate::export::creds::ProcessCredentials::from_status(&status)
            .map(|c| crate::export::creds::ProcessCredentials { user_ns, ..c }),
        ns,
        nspid: status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last()?.parse().ok())
            .unwrap_or(0),
        binary: binary.to_string_lossy().into_owned(),
        args,
        cwd: std::fs::read_link(dir.join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cgroup_id: cgroup_id(dir, cgroup_root),
    })
}

/// Every user-space process under `root` (normally /proc), parents before
/// children; cgroup ids are inodes under `cgroup_root`.
pub fn scan(root: &Path, cgroup_root: &Path) -> Vec<ProcEntry> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut out: Vec<ProcEntry> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid = e.file_name().to_str()?.parse().ok()?;
            read_entry(&e.path(), pid, 1_000_000_000 / hz, cgroup_root)
        })
        .collect();
    // A parent starts before its children.
    out.sort_by_key(|e| (e.ktime, e.pid));
    out
}

/// The optional process fields events carry, by flag.
#[derive(Debug, Clone, Copy, Default)]
pub struct Optional {
    /// `process_credentials` (`--enable-process-cred`).
    pub creds: bool,
    /// `ns` (`--enable-process-ns`).
    pub ns: bool,
}

/// Cache entries for scanned processes, linked to their parents; with
/// the optional fields asked for.
pub fn processes(
    entries: &[ProcEntry],
    cache: &mut super::ProcessCache,
    optional: Optional,
) -> Vec<Process> {
    let ids: HashMap<u32, Arc<str>> = entries
        .iter()
        .map(|e| {
            (
                e.pid,
                Arc::<str>::from(cache.exec_id(e.ktime, e.pid).as_str()),
            )
        })
        .collect();
    // Parents come first, so each one's answer is known for its children.
    let mut in_init_tree: HashMap<u32, bool> = HashMap::new();
    for e in entries {
        let tree = e.nspid == 1 || in_init_tree.get(&e.ppid).copied().unwrap_or(false);
        in_init_tree.insert(e.pid, tree);
    }
    entries
        .iter()
        .map(|e| Process {
            exec_id: ids[&e.pid].clone(),
            in_init_tree: in_init_tree.get(&e.pid).copied(),
            pid: e.pid,
            uid: e.uid,
            auid: e.auid,
            process_credentials: e.creds.clone().filter(|_| optional.creds).map(Box::new),
            ns: e.ns.clone().filter(|_| optional.ns).map(Box::new),
            cwd: cache.strings.intern(&e.cwd),
            binary: cache.strings.intern(&e.binary),
            arguments: super::join_args(e.args.get(1..).unwrap_or_default()).into(),
            flags: cache.strings.intern("procFS"),
            start_time: cache.rfc3339(e.ktime),
            parent_exec_id: ids.get(&e.ppid).cloned().unwrap_or_default(),
            tid: e.pid,
            cgroup_id: e.cgroup_id,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_comm_parses() {
        let stat = "42 (a) b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(parse_stat(stat), Some((7, 12345)));
    }

    #[test]
    fn scan_finds_this_process_and_its_parent_first() {
        let all = scan(
            Path::new("/proc"),
            &crate::daemon::cgroup2_root().unwrap_or_else(|| "/sys/fs/cgroup".into()),
        );
        let me = std::process::id();
        let pos = all
            .iter()
            .position(|e| e.pid == me)
            .expect("this process is scanned");
        let ppid = all[pos].ppid;
        if let Some(ppos) = all.iter().position(|e| e.pid == ppid) {
            assert!(ppos < pos, "parent sorted before child");
        }
        assert_eq!(
            all[pos].binary,
            std::env::current_exe().unwrap().to_string_lossy()
        );
    }
}
