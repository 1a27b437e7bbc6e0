//! Putting a policy set in force, at start and on every change: the
//! kernel's tables, the policy state of running processes, pod scopes, the
//! pipeline's reading of selector bits and the brain's rules, and which
//! records wake the daemon. A change is in the kernel when this returns.
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::brain::On;
use crate::enrich::cgroup::SharedPaths;
use crate::enrich::pods::PodStore;
use crate::load::Kernel;
use crate::pipeline::Pipeline;
use crate::process::procfs;
use crate::reconcile::Active;
use crate::scopes::PodScopes;

/// The kernel's tables are written before this runs (by `adopt` at start,
/// by the loop on a change), since a set must be written before it attaches.
pub struct Enforcer {
    /// `--enforce-cgroup` ids.
    pub scope: Vec<u64>,
    pub cgroup_root: PathBuf,
    pub pods: Option<Arc<RwLock<PodStore>>>,
    pub paths: SharedPaths,
}

/// How the kernel's tables stand when [`Enforcer::enforce`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// Written with these policies by a set this daemon just loaded: the
    /// states the exec program writes from now on are already right.
    Fresh,
    /// Written under other policies (an adopted set, a change): every
    /// process state is recomputed.
    Stale,
}

impl Enforcer {
    pub fn enforce(
        &self,
        kernel: &mut Kernel,
        pipeline: &mut Pipeline,
        scopes: &mut Option<PodScopes>,
        active: &Active,
        tables: Tables,
    ) -> anyhow::Result<()> {
        let c = &active.compiled;
        self.seed(kernel, active, tables != Tables::Fresh)?;
        match scopes.as_mut() {
            Some(s) => s.set_scopes(c.scopes.clone()),
            None => {
                *scopes = PodScopes::new(
                    c.scopes.clone(),
                    self.pods.clone(),
                    self.paths.clone(),
                    self.scope.clone(),
                )
            }
        }
        if let Some(s) = scopes.as_mut() {
            if tables == Tables::Stale {
                s.adopt(kernel)?;
            }
            s.reconcile(kernel)?;
            kernel.enable_pod_scopes()?;
        }
        for scope in &c.scopes {
            tracing::info!(policy = %scope.policy, namespace = ?scope.namespace, "pod-scoped policy: acts only on the pods it selects");
        }
        pipeline.set_policies(c, active.rules.clone());
        // Records from pods wake the reader at once only when the brain acts
        // on them; the rest wait for the drain tick like every routine record.
        let wakeups = [
            (On::Exec, sensor_common::pod_wakeups::EXEC),
            (On::Connect, sensor_common::pod_wakeups::CONNECT),
        ]
        .into_iter()
        .filter(|(on, _)| pipeline.wants(*on))
        .fold(0, |bits, (_, bit)| bits | bit);
        kernel.set_pod_wakeups(wakeups)?;
        // Routine connects become records only for the brain's connect
        // rules, and only from pods when every such rule is about pods.
        use sensor_common::connect_records as records;
        kernel.set_connect_records(
            match (pipeline.wants(On::Connect), pipeline.pods_only(On::Connect)) {
                (false, _) => records::NONE,
                (true, true) => records::PODS,
                (true, false) => records::ALL,
            },
        )?;
        Ok(())
    }

    /// The policy state of every running process, from /proc. With
    /// `replace`, states written under other policies are overwritten;
    /// otherwise a state the exec program already wrote is kept.
    fn seed(&self, kernel: &mut Kernel, active: &Active, replace: bool) -> anyhow::Result<()> {
        let scanned = procfs::scan(Path::new("/proc"), &self.cgroup_root);
        let mut states = std::collections::HashMap::new();
        for e in &scanned {
            let parent = states.get(&e.ppid).copied().unwrap_or_default();
            states.insert(e.pid, active.compiled.state_for(&e.binary, parent));
        }
        let seeds: Vec<_> = states
            .into_iter()
            .filter(|(_, s)| replace || *s != Default::default())
            .collect();
        kernel.seed_states(&seeds, replace)?;
        Ok(())
    }
}
