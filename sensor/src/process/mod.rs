//! The process cache: every known process by exec_id, the current one by pid,
//! and parent links, so that each event carries its `process` and `parent`.
//! Processes older than the daemon come from a /proc scan (`procfs`). Exited
//! processes stay until the cache is over capacity, oldest exit first, so late
//! events and children still find them. Past that, live processes go too,
//! least recently used first (Tetragon's cache is an LRU of the same size):
//! a fork flood cannot grow the daemon without bound.
pub mod clock;
mod intern;
pub mod procfs;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use sensor_common::{exec_flags, ExitEvent, ForkEvent};

use crate::decode::ExecRecord;
use crate::export::event::Process;
pub use clock::Clock;

/// Tetragon's process id: base64 of `node:start_ktime:pid`, stable across
/// daemon restarts because every part comes from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExecId(String);

impl ExecId {
    pub fn new(node: &str, ktime: u64, pid: u32) -> Self {
        ExecId(base64::engine::general_purpose::STANDARD.encode(format!("{node}:{ktime}:{pid}")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The pids whose lineage ends ancestors (init and kthreadd), as Tetragon's.
const OLDEST_ANCESTOR_PID: u32 = 2;
/// Ancestors listed at most.
const MAX_ANCESTORS: usize = 256;

/// A process and its parent, as events show them.
pub type Lineage = (Arc<Process>, Option<Arc<Process>>);

/// A cached process and when an event last looked it up.
struct Entry {
    process: Arc<Process>,
    used: Cell<u64>,
}

pub struct ProcessCache {
    node: String,
    clock: Clock,
    entries: HashMap<Arc<str>, Entry>,
    /// Counts lookups: the clock of `Entry::used`.
    tick: Cell<u64>,
    by_pid: HashMap<u32, Arc<str>>,
    /// exec_ids no longer current (exited or replaced by an exec), oldest first.
    retired: VecDeque<Arc<str>>,
    capacity: usize,
    pub misses: u64,
    /// Processes dropped to stay within the capacity, live ones included.
    pub evictions: u64,
    /// Of those, live processes (their next events miss their lineage).
    pub live_evictions: u64,
    strings: intern::Interner,
}

/// Tetragon joins arguments with spaces; an argument that holds whitespace or
/// is empty is quoted so that the split stays readable.
fn join_args(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.is_empty() || a.chars().any(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect();
    quoted.join(" ")
}

fn exec_flag_words(flags: u32, cwd: &str, after_clone: bool) -> String {
    let mut words = vec!["execve"];
    for (bit, word) in [
        (exec_flags::PATH_TRUNCATED, "truncFilename"),
        (exec_flags::ARGS_TRUNCATED, "truncArgs"),
        (exec_flags::PATH_ERROR, "errorFilename"),
        (exec_flags::ARGS_ERROR, "errorArgs"),
        (exec_flags::CWD_ERROR, "errorCWD"),
    ] {
        if flags & bit != 0 {
            words.push(word);
        }
    }
    if cwd == "/" {
        words.push("rootcwd");
    }
    if after_clone {
        words.push("clone");
    }
    words.join(" ")
}

impl ProcessCache {
    pub fn new(node: String, clock: Clock, capacity: usize) -> Self {
        ProcessCache {
            node,
            clock,
            entries: HashMap::new(),
            tick: Cell::new(0),
            by_pid: HashMap::new(),
            retired: VecDeque::new(),
            capacity: capacity.max(1),
            misses: 0,
            evictions: 0,
            live_evictions: 0,
            strings: intern::Interner::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn exec_id(&self, ktime: u64, pid: u32) -> ExecId {
        ExecId::new(&self.node, ktime, pid)
    }

    pub fn by_pid(&self, pid: u32) -> Option<Arc<Process>> {
        self.get(self.by_pid.get(&pid)?)
    }

    pub fn parent_of(&self, p: &Process) -> Option<Arc<Process>> {
        self.get(&p.parent_exec_id)
    }

    /// The process of `exec_id`, marked as used now.
    fn get(&self, exec_id: &str) -> Option<Arc<Process>> {
        let e = self.entries.get(exec_id)?;
        let now = self.tick.get() + 1;
        self.tick.set(now);
        e.used.set(now);
        Some(e.process.clone())
    }

    /// Tetragon's ancestors of `p`: its parent's parent, and so on up to
    /// init (pid 1) or kthreadd (pid 2) included, or as far as the cache
    /// knows; none for those two themselves.
    pub fn ancestors(&self, p: &Process) -> Vec<Arc<Process>> {
        let mut out = Vec::new();
        if p.pid <= OLDEST_ANCESTOR_PID {
            return out;
        }
        let Some(mut at) = self.parent_of(p) else {
            return out;
        };
        // Bounded: a lineage the cache got wrong must not loop.
        while at.pid > OLDEST_ANCESTOR_PID && out.len() < MAX_ANCESTORS {
            let Some(next) = self.parent_of(&at) else {
                break;
            };
            out.push(next.clone());
            at = next;
        }
        out
    }

    /// `p` and every live process it started, at any depth, each the
    /// current process of its pid (for a kill of the whole tree).
    pub fn tree_of(&self, p: &Process) -> Vec<Arc<Process>> {
        let mut out = Vec::new();
        for id in self.by_pid.values() {
            let Some(mut q) = self.entries.get(id).map(|e| e.process.clone()) else {
                continue;
            };
            let start = q.clone();
            for _ in 0..64 {
                if q.exec_id == p.exec_id {
                    out.push(start);
                    break;
                }
                match self.parent_of(&q) {
                    Some(parent) => q = parent,
                    None => break,
                }
            }
        }
        out
    }

    /// Makes `p` the current process of its pid.
    pub fn insert(&mut self, p: Process) -> Arc<Process> {
        let p = Arc::new(p);
        if let Some(old) = self.by_pid.insert(p.pid, p.exec_id.clone()) {
            self.retired.push_back(old);
        }
        let now = self.tick.get() + 1;
        self.tick.set(now);
        let entry = Entry {
            process: p.clone(),
            used: Cell::new(now),
        };
        self.entries.insert(p.exec_id.clone(), entry);
        self.evict();
        p
    }

    fn evict(&mut self) {
        while self.entries.len() > self.capacity {
            match self.retired.pop_front() {
                Some(id) => {
                    self.evictions += self.entries.remove(&id).is_some() as u64;
                }
                None => return self.evict_live(),
            }
        }
    }

    /// Over capacity with only live processes left: the least recently used
    /// go, a sixteenth of the capacity beyond what is needed at once, so
    /// that a flood pays one scan per batch, not one per process.
    fn evict_live(&mut self) {
        let over = self.entries.len().saturating_sub(self.capacity);
        if over == 0 {
            return;
        }
        let mut live: Vec<(u64, u32)> = self
            .by_pid
            .iter()
            .filter_map(|(pid, id)| Some((self.entries.get(id)?.used.get(), *pid)))
            .collect();
        let n = (over + self.capacity / 16).min(live.len());
        if n == 0 {
            return;
        }
        live.select_nth_unstable(n - 1);
        for &(_, pid) in &live[..n] {
            if let Some(id) = self.by_pid.remove(&pid) {
                self.entries.remove(&id);
                self.evictions += 1;
                self.live_evictions += 1;
            }
        }
    }

    pub fn exec(&mut self, rec: &ExecRecord) -> Lineage {
        let h = &rec.header;
        let parent = self.by_pid(h.ppid);
        let after_clone = self.by_pid(h.pid).is_some_and(|p| {
            p.flags.split(' ').any(|w| w == "clone") && !p.flags.contains("execve")
        });
        let p = Process {
            exec_id: self.exec_id(h.ktime, h.pid).0.into(),
            pid: h.pid,
            uid: h.uid,
            auid: h.auid,
            process_credentials: crate::export::creds::ProcessCredentials::from_kernel(&h.creds)
                .map(Box::new),
            ns: crate::export::ns::Namespaces::from_inums(&h.ns).map(Box::new),
            binary_properties: crate::export::binary::BinaryProperties::of(
                &h.binary, h.uid, h.gid, &rec.path,
            )
            .map(Box::new),
            // Tetragon's: a container's init (PID 1 in its namespace) and
            // everything it starts.
            in_init_tree: Some(
                h.nspid == 1
                    || parent
                        .as_ref()
                        .is_some_and(|p| p.in_init_tree == Some(true)),
            ),
            cwd: self.strings.intern(&rec.cwd),
            binary: self.strings.intern(&rec.path),
            arguments: join_args(rec.args.get(1..).unwrap_or_default()).into(),
            flags: self
                .strings
                .intern(&exec_flag_words(h.flags, &rec.cwd, after_clone)),
            start_time: self.clock.rfc3339(h.ktime),
            parent_exec_id: parent
                .as_ref()
                .map(|p| p.exec_id.clone())
                .unwrap_or_default(),
            tid: h.tid,
            cgroup_id: h.cgroup_id,
            ..Default::default()
        };
        if parent.is_none() {
            self.misses += 1;
        }
        (self.insert(p), parent)
    }

    /// A new process: it runs its parent's image until it execs.
    pub fn fork(&mut self, ev: &ForkEvent) -> Option<Arc<Process>> {
        let Some(parent) = self.by_pid(ev.ppid) else {
            self.misses += 1;
            return None;
        };
        let child = Process {
            exec_id: self.exec_id(ev.ktime, ev.pid).0.into(),
            pid: ev.pid,
            tid: ev.pid,
            flags: self.strings.intern("clone"),
            start_time: self.clock.rfc3339(ev.ktime),
            parent_exec_id: parent.exec_id.clone(),
            ..(*parent).clone()
        };
        Some(self.insert(child))
    }

    /// The process that exited, retired from its pid.
    pub fn exit(&mut self, ev: &ExitEvent) -> Option<Lineage> {
        let Some(id) = self.by_pid.remove(&ev.pid) else {
            self.misses += 1;
            return None;
        };
        let p = self.entries.get(&id)?.process.clone();
        self.retired.push_back(id);
        let parent = self.parent_of(&p);
        Some((p, parent))
    }

    pub fn rfc3339(&self, ktime: u64) -> String {
        self.clock.rfc3339(ktime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::{kind, ExecEvent};

    fn exec(pid: u32, ppid: u32, ktime: u64, path: &str) -> ExecRecord {
        ExecRecord {
            header: ExecEvent {
                kind: kind::EXEC,
                pid,
                tid: pid,
                ppid,
                uid: 1000,
                gid: 0,
                ktime,
                cgroup_id: 0,
                hits: 0,
                signal: 0,
                flags: 0,
                path_len: 0,
                args_len: 0,
                cwd_len: 0,
                comm: [0; 16],
                auid: 0,
                creds: Default::default(),
                ns: Default::default(),
                nspid: 0,
                _pad: 0,
                binary: Default::default(),
            },
            path: path.into(),
            args: vec![path.into(), "a b".into(), "c".into()],
            cwd: "/".into(),
        }
    }

    #[test]
    fn exec_id_is_base64_of_node_ktime_pid() {
        assert_eq!(ExecId::new("node", 12, 34).as_str(), "bm9kZToxMjozNA==");
    }

    #[test]
    fn fork_then_exec_links_to_the_forking_parent() {
        let mut c = ProcessCache::new("n".into(), Clock::new(), 100);
        let (sh, _) = c.exec(&exec(10, 1, 100, "/bin/sh"));
        let clone = c
            .fork(&ForkEvent {
                kind: kind::FORK,
                pid: 11,
                ppid: 10,
                _pad: 0,
                ktime: 200,
            })
            .unwrap();
        assert_eq!(clone.parent_exec_id, sh.exec_id);
        assert_eq!(&*clone.binary, "/bin/sh");
        let (echo, parent) = c.exec(&exec(11, 10, 300, "/bin/echo"));
        assert_eq!(parent.unwrap().exec_id, sh.exec_id);
        assert_eq!(&*echo.flags, "execve rootcwd clone");
        assert_eq!(&*echo.arguments, "\"a b\" c");
        let (gone, parent) = c
            .exit(&ExitEvent {
                kind: kind::EXIT,
                pid: 11,
                tid: 11,
                exit_code: 0,
                ktime: 400,
            })
            .unwrap();
        assert_eq!(gone.exec_id, echo.exec_id);
        assert_eq!(parent.unwrap().exec_id, sh.exec_id);
        assert!(c.by_pid(11).is_none());
    }

    #[test]
    fn the_init_tree_is_a_namespace_init_and_what_it_starts() {
        let mut c = ProcessCache::new("n".into(), Clock::new(), 100);
        // A process whose parent is unknown, not PID 1 anywhere: outside.
        let (stray, _) = c.exec(&exec(50, 40, 10, "/bin/sh"));
        assert_eq!(stray.in_init_tree, Some(false));
        // A namespace's PID 1, and its child.
        let mut init = exec(60, 50, 20, "/sbin/init");
        init.header.nspid = 1;
        let (init, _) = c.exec(&init);
        assert_eq!(init.in_init_tree, Some(true));
        let (child, _) = c.exec(&exec(61, 60, 30, "/bin/true"));
        assert_eq!(child.in_init_tree, Some(true));
        // Another child of the stray one stays outside.
        let (other, _) = c.exec(&exec(70, 50, 40, "/bin/true"));
        assert_eq!(other.in_init_tree, Some(false));
    }

    #[test]
    fn processes_share_their_strings() {
        let mut c = ProcessCache::new("n".into(), Clock::new(), 100);
        let (a, _) = c.exec(&exec(10, 1, 100, "/bin/sh"));
        let (b, _) = c.exec(&exec(20, 1, 200, "/bin/sh"));
        assert!(Arc::ptr_eq(&a.binary, &b.binary));
        assert!(Arc::ptr_eq(&a.cwd, &b.cwd));
        assert!(Arc::ptr_eq(&a.flags, &b.flags));
        let child = c
            .fork(&ForkEvent {
                kind: kind::FORK,
                pid: 11,
                ppid: 10,
                _pad: 0,
                ktime: 300,
            })
            .expect("the parent is known");
        assert!(Arc::ptr_eq(&child.arguments, &a.arguments));
    }

    #[test]
    fn ancestors_run_from_the_grandparent_to_init() {
        let mut c = ProcessCache::new("n".into(), Clock::new(), 100);
        let (init, _) = c.exec(&exec(1, 0, 10, "/sbin/init"));
        let (a, _) = c.exec(&exec(10, 1, 20, "/bin/a"));
        let (b, _) = c.exec(&exec(20, 10, 30, "/bin/b"));
        let (d, _) = c.exec(&exec(30, 20, 40, "/bin/d"));
        let (orphan, _) = c.exec(&exec(50, 99, 50, "/bin/o"));
        let pids = |p: &Process| -> Vec<u32> { c.ancestors(p).iter().map(|a| a.pid).collect() };
        assert_eq!(pids(&d), vec![10, 1]);
        assert_eq!(pids(&b), vec![1]);
        assert!(pids(&a).is_empty(), "a's parent is init: nothing beyond it");
        assert!(pids(&init).is_empty());
        // A lineage the cache lost stops where it is lost.
        assert!(pids(&orphan).is_empty());
    }

    #[test]
    fn a_tree_is_the_process_and_everything_below_it() {
        let mut c = ProcessCache::new("n".into(), Clock::new(), 100);
        c.exec(&exec(1, 0, 1, "/sbin/init"));
        let (sh, _) = c.exec(&exec(10, 1, 100, "/bin/sh"));
        c.exec(&exec(11, 10, 200, "/usr/bin/curl"));
        c.exec(&exec(12, 11, 300, "/bin/sleep"));
        c.exec(&exec(20, 1, 400, "/bin/other"));
        let mut pids: Vec<u32> = c.tree_of(&sh).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12]);
    }

    #[test]
    fn retired_processes_are_evicted_first_and_memory_stays_bounded() {
        let mut c = ProcessCache::new("n".into(), Clock::new(), 10);
        c.exec(&exec(1, 0, 1, "/sbin/init"));
        for i in 0..1000u32 {
            let pid = 100 + i;
            c.fork(&ForkEvent {
                kind: kind::FORK,
                pid,
                ppid: 1,
                _pad: 0,
                ktime: 10 + i as u64,
            });
            c.exec(&exec(pid, 1, 20 + i as u64, "/bin/true"));
            c.exit(&ExitEvent {
                kind: kind::EXIT,
                pid,
                tid: pid,
                exit_code: 0,
                ktime: 30,
            });
        }
        assert!(c.len() <= 10, "cache holds {}", c.len());
        assert!(
            c.by_pid(1).is_some(),
            "a live process is kept over exited ones"
        );
        assert_eq!(c.live_evictions, 0);
    }

    #[test]
    fn live_processes_past_the_capacity_go_least_recently_used_first() {
        let mut c = ProcessCache::new("n".into(), Clock::new(), 32);
        c.exec(&exec(1, 0, 1, "/sbin/init"));
        c.exec(&exec(2, 1, 2, "/usr/bin/kubelet"));
        for i in 0..1000u32 {
            let pid = 100 + i;
            c.fork(&ForkEvent {
                kind: kind::FORK,
                pid,
                ppid: 2,
                _pad: 0,
                ktime: 10 + i as u64,
            });
            // Events keep looking up init; the forks themselves look up
            // kubelet as their parent.
            assert!(c.by_pid(1).is_some());
        }
        assert!(c.len() <= 32, "cache holds {}", c.len());
        assert!(
            c.by_pid(1).is_some() && c.by_pid(2).is_some(),
            "used ones stay"
        );
        assert!(c.by_pid(100).is_none(), "the least recently used went");
        assert!(c.by_pid(1099).is_some(), "the newest stayed");
        assert_eq!(c.live_evictions, c.evictions);
        assert!(c.live_evictions >= 1000 + 2 - 32);
    }
}
