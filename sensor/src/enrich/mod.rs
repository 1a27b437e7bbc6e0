//! Pod context: every event of a process in a pod gets Tetragon's `pod`
//! object and `docker` field. The cgroup id the kernel reported leads to the
//! cgroup path (`cgroup`), the path to the pod uid and container id, and the
//! uid to the pod that the Kubernetes watcher (`kube`) keeps in `pods`.
//! Events of a pod the watcher does not know yet wait (in order, for a
//! bounded time) instead of going out without it.
pub mod cgroup;
pub mod kube;
pub mod pods;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::export::event::{Envelope, Pod, Process};
use cgroup::{ContainerRef, SharedPaths};
use pods::PodStore;

/// How long an event waits for its pod before it goes out without it.
pub const HOLD_FOR: Duration = Duration::from_secs(2);
/// Events waiting at most; past this the oldest go out without their pod.
const MAX_HELD: usize = 10_000;

enum Lookup {
    /// Not in a container, or no Kubernetes to ask.
    Done(Option<Box<Pod>>, String),
    /// In a pod the watcher does not know yet (with the `docker` value).
    Pending(String),
}

pub struct Enricher {
    paths: SharedPaths,
    refs: HashMap<u64, Option<ContainerRef>>,
    /// `None` when running without Kubernetes.
    pods: Option<Arc<RwLock<PodStore>>>,
    held: VecDeque<(Instant, Envelope)>,
    /// Where a pod the watcher does not know still counts as a pod for the
    /// brain: cgroup paths (relative to the cgroup root) of the enforcement
    /// scope, or every kubelet cgroup when empty.
    unknown_scope: Vec<String>,
    /// Events that went out without the pod they waited for.
    pub unresolved: u64,
}

impl Enricher {
    pub fn new(paths: SharedPaths, pods: Option<Arc<RwLock<PodStore>>>) -> Self {
        Enricher {
            paths,
            refs: HashMap::new(),
            pods,
            held: VecDeque::new(),
            unknown_scope: Vec::new(),
            unresolved: 0,
        }
    }

    /// Limits the pods the watcher does not know to these cgroup subtrees
    /// (`--enforce-cgroup`): daemons that share a host, as tests do, must
    /// not judge each other's pods.
    pub fn with_unknown_scope(mut self, scope: Vec<String>) -> Self {
        self.unknown_scope = scope;
        self
    }

    fn in_unknown_scope(&mut self, cgroup_id: u64) -> bool {
        if self.unknown_scope.is_empty() {
            return true;
        }
        let mut paths = self.paths.borrow_mut();
        let Some(path) = paths.path(cgroup_id) else {
            return false;
        };
        self.unknown_scope.iter().any(|s| {
            path.strip_prefix(s.trim_end_matches('/'))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    fn container(&mut self, cgroup_id: u64) -> Option<ContainerRef> {
        if let Some(r) = self.refs.get(&cgroup_id) {
            return r.clone();
        }
        let r = cgroup::parse(self.paths.borrow_mut().path(cgroup_id)?);
        if self.refs.len() > 50_000 {
            self.refs.clear();
        }
        self.refs.insert(cgroup_id, r.clone());
        r
    }

    fn lookup(&mut self, cgroup_id: u64) -> Lookup {
        let Some(c) = self.container(cgroup_id) else {
            return Lookup::Done(None, String::new());
        };
        let docker: String = c.container_id.chars().take(31).collect();
        let Some(store) = &self.pods else {
            return Lookup::Done(None, docker);
        };
        let store = store.read().unwrap_or_else(|e| e.into_inner());
        match store.get(&c.pod_uid) {
            Some(info) => Lookup::Done(Some(Box::new(info.event_pod(&c.container_id))), docker),
            None => Lookup::Pending(docker),
        }
    }

    /// The pod of a cgroup, for the brain, which does not wait. A pod the
    /// watcher does not know yet (the API down at start, a watch outage, a
    /// lagging watch) is still a pod: its uid and container id come from
    /// the cgroup path, its namespace and name stay empty
    /// (`Pod::is_known`), and the brain decides on it all the same.
    pub fn pod_of(&mut self, cgroup_id: u64) -> Option<Pod> {
        match self.lookup(cgroup_id) {
            Lookup::Done(pod, _) => pod.map(|b| *b),
            Lookup::Pending(_) => {
                if !self.in_unknown_scope(cgroup_id) {
                    return None;
                }
                let c = self.container(cgroup_id)?;
                Some(Pod {
                    uid: c.pod_uid,
                    container: Some(crate::export::event::Container {
                        id: c.container_id,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
        }
    }

    /// Fills `p`'s pod; false while it waits for it. `give_up`: fill what
    /// the cgroup tells (the container id) and stop waiting.
    fn fill(&mut self, p: &mut Process, give_up: bool) -> bool {
        if p.pod.is_some() || p.cgroup_id == 0 {
            return true;
        }
        match self.lookup(p.cgroup_id) {
            Lookup::Done(pod, docker) => {
                p.pod = pod;
                p.docker = docker;
                true
            }
            Lookup::Pending(docker) => {
                if give_up {
                    p.docker = docker;
                }
                give_up
            }
        }
    }

    /// Fills the pod of every process the event shows; false while one of
    /// them waits for its pod.
    fn apply(&mut self, e: &mut Envelope, give_up: bool) -> bool {
        let mut done = true;
        for p in e.event.processes_mut() {
            done &= self.fill(p, give_up);
        }
        done
    }

    /// Takes an event; hands on, in order, every event that is ready.
    pub fn push(&mut self, mut e: Envelope, out: &mut impl FnMut(&Envelope)) {
        if self.held.is_empty() && self.apply(&mut e, false) {
            out(&e);
            return;
        }
        self.held.push_back((Instant::now(), e));
        self.flush(out);
    }

    /// Hands on the waiting events whose pod is now known, or whose wait is over.
    pub fn flush(&mut self, out: &mut impl FnMut(&Envelope)) {
        while let Some((since, mut e)) = self.held.pop_front() {
            let expired = since.elapsed() >= HOLD_FOR || self.held.len() >= MAX_HELD;
            if self.apply(&mut e, false) {
                out(&e);
            } else if expired {
                self.apply(&mut e, true);
                self.unresolved += 1;
                out(&e);
            } else {
                self.held.push_front((since, e));
                break;
            }
        }
    }
}
