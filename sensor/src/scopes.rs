//! Keeps the kernel's pod scope sets current as pods come and go:
//! `TracingPolicyNamespaced` and `podSelector` policies act only on the pods
//! they select, and the kernel knows them by their cgroups. Every pod also
//! carries `POD_BIT`, so that its records wake the reader (and the brain) at
//! once and its connects are recorded for the brain's pod rules: the pods
//! the watcher knows by their own cgroups, and the ones it does not know yet
//! (a lagging watch, an API down at start) through kubelet's kubepods roots,
//! so that the brain judges them from their cgroup path meanwhile.
//!
//! A pod that cannot be placed yet is in every scope: its cgroup path names
//! neither its namespace nor its labels, and a pod-scoped kill policy must
//! fail closed, not pass whatever runs before the watcher catches up. The
//! roots' entries carry that (`POD_UNKNOWN`); a pod's own entry, written
//! once the watcher knows it, replaces them for its tasks.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::enrich::cgroup::SharedPaths;
use crate::enrich::pods::PodStore;
use crate::load::{Kernel, LoadError};
use crate::policy::Scope;
use sensor_common::{POD_BIT, POD_UNKNOWN};

pub struct PodScopes {
    scopes: Vec<Scope>,
    pods: Arc<RwLock<PodStore>>,
    paths: SharedPaths,
    /// Pod cgroup id → scope bits written to the kernel.
    written: HashMap<u64, u64>,
    seen_generation: Option<u64>,
    /// Some selected pod had no cgroup yet: look again next time.
    incomplete: bool,
    /// Where pods the watcher does not know are looked for: the
    /// `--enforce-cgroup` subtrees when given, else the kubepods roots.
    unknown_roots: Vec<u64>,
    /// The sensor's own pod (`protect`).
    own_uid: Option<String>,
}

impl PodScopes {
    /// `None` without a pod store.
    pub fn new(
        scopes: Vec<Scope>,
        pods: Option<Arc<RwLock<PodStore>>>,
        paths: SharedPaths,
        unknown_roots: Vec<u64>,
    ) -> Option<Self> {
        let Some(pods) = pods else {
            if !scopes.is_empty() {
                tracing::warn!("pod-scoped policies need pod context; without a Kubernetes API they act on no process");
            }
            return None;
        };
        Some(PodScopes {
            scopes,
            pods,
            paths,
            written: HashMap::new(),
            seen_generation: None,
            incomplete: false,
            unknown_roots,
            own_uid: crate::enrich::cgroup::own_pod(),
        })
    }

    /// Takes over what the kernel's map already holds (an adopted set), so
    /// that entries no pod wants any more are removed.
    pub fn adopt(&mut self, kernel: &Kernel) -> Result<(), LoadError> {
        self.written = kernel.pod_scopes()?.into_iter().collect();
        self.seen_generation = None;
        Ok(())
    }

    /// New scoped policies (a policy change): the next reconcile rewrites
    /// every pod's bits.
    pub fn set_scopes(&mut self, scopes: Vec<Scope>) {
        self.scopes = scopes;
        self.seen_generation = None;
    }

    /// Brings the kernel's map in line with the pods; cheap when nothing changed.
    pub fn reconcile(&mut self, kernel: &mut Kernel) -> Result<(), LoadError> {
        let selected: Vec<(String, u64)> = {
            let store = self.pods.read().unwrap_or_else(|e| e.into_inner());
            if Some(store.generation) == self.seen_generation && !self.incomplete {
                return Ok(());
            }
            self.seen_generation = Some(store.generation);
            store
                .all()
                .map(|p| {
                    let bits = self
                        .scopes
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.selects(&p.namespace, &p.labels))
                        .fold(POD_BIT, |b, (i, _)| b | 1 << i);
                    // The sensor's own pod is never in a policy's scope: a
                    // namespaced policy for its namespace must not kill it.
                    if bits != POD_BIT && self.own_uid.as_deref() == Some(p.uid.as_str()) {
                        tracing::warn!(pod = %p.name, "pod-scoped policies select the sensor's own pod; it is kept out of them");
                        return (p.uid.clone(), POD_BIT);
                    }
                    (p.uid.clone(), bits)
                })
                .collect()
        };
        self.incomplete = false;
        let mut want = HashMap::new();
        // The sensor's own pod has an entry of its own even before the
        // watcher knows it, so that it never falls into every scope.
        if let Some(uid) = self.own_uid.as_deref() {
            if let Some(id) = self.paths.borrow_mut().pod_cgroup(uid) {
                want.insert(id, POD_BIT);
            }
        }
        for (uid, bits) in selected {
            match self.paths.borrow_mut().pod_cgroup(&uid) {
                Some(id) => {
                    want.insert(id, bits);
                }
                None => self.incomplete = true,
            }
        }
        let roots = if self.unknown_roots.is_empty() {
            self.paths.borrow().kubepods_roots().to_vec()
        } else {
            self.unknown_roots.clone()
        };
        let every_scope = (1u64 << self.scopes.len()) - 1;
        for id in roots {
            // A root that is itself a known pod's cgroup (an
            // `--enforce-cgroup` may be) keeps that pod's own entry.
            want.entry(id)
                .or_insert(POD_BIT | POD_UNKNOWN | every_scope);
        }
        for (id, bits) in &want {
            if self.written.get(id) != Some(bits) {
                kernel.set_pod_scopes(*id, *bits)?;
            }
        }
        for id in self.written.keys().filter(|id| !want.contains_key(id)) {
            kernel.set_pod_scopes(*id, 0)?;
        }
        if self.written.len() != want.len() {
            tracing::debug!(pods = want.len(), "pod cgroups known to the kernel");
        }
        self.written = want;
        Ok(())
    }
}
