//! Adoption: how a starting daemon takes over the kernel side. A pinned set
//! of this build is adopted as it is (its programs keep running; nothing is
//! attached twice) and given this daemon's policies. Any other set (an
//! older or newer build) is replaced without a gap: the new set is loaded,
//! given the policies and the old set's quarantines, attached and pinned
//! while the old one still enforces, and only then is the old one unpinned.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::load::pin::{self, SetDir};
use crate::load::probe::Plan;
use crate::load::Kernel;
use crate::policy::Compiled;

/// How the kernel side came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Loaded and attached by this daemon; no set was pinned before.
    Fresh,
    /// A pinned set of this build, kept running.
    Adopted,
    /// Sets of other builds, replaced by this one's.
    Replaced(Vec<String>),
}

pub struct Started {
    pub kernel: Kernel,
    /// Where the set is pinned; `None` when pinning is off.
    pub set: Option<SetDir>,
    pub origin: Origin,
}

pub struct KernelOptions<'a> {
    pub bpf_dir: Option<&'a Path>,
    pub plan: &'a Plan,
    pub sizes: crate::load::Sizes,
    pub cgroup_root: &'a Path,
}

/// Brings up the kernel side with `compiled` policies written and enforcing.
pub fn start(o: &KernelOptions, compiled: &Compiled, scope: &[u64]) -> anyhow::Result<Started> {
    let Some(bpf_dir) = o.bpf_dir else {
        let mut kernel = Kernel::load(o.sizes, o.plan)?;
        kernel.apply(compiled, scope)?;
        kernel.attach(o.cgroup_root)?;
        return Ok(Started {
            kernel,
            set: None,
            origin: Origin::Fresh,
        });
    };
    crate::load::preflight()?;
    pin::prepare(bpf_dir)?;
    let id = crate::load::build_id(o.plan);
    let (mine, others): (Vec<SetDir>, Vec<SetDir>) =
        pin::sets(bpf_dir).into_iter().partition(|s| s.id() == id);
    if let Some(set) = mine.into_iter().find(SetDir::is_complete) {
        match Kernel::adopt(&set, o.plan) {
            Ok(mut kernel) => {
                kernel.apply(compiled, scope)?;
                remove_all(&others);
                tracing::info!(set = %set.path.display(), "adopted the pinned set: its programs kept enforcing");
                return Ok(Started {
                    kernel,
                    set: Some(set),
                    origin: Origin::Adopted,
                });
            }
            // A set we cannot use is removed: this is the one gap, and it
            // takes a set that someone damaged by hand.
            Err(e) => {
                tracing::error!(error = %e, "the pinned set cannot be adopted; replacing it");
                set.remove()?;
            }
        }
    }
    let mut kernel = Kernel::load(o.sizes, o.plan)?;
    kernel.apply(compiled, scope)?;
    let carried = carry_quarantines(&others, &mut kernel);
    kernel.attach(o.cgroup_root)?;
    let set = SetDir::create(bpf_dir, &id)?;
    kernel
        .pin(&set)
        .with_context(|| format!("pinning the kernel side under {}", set.path.display()))?;
    // Both sets enforce now; the old one can go.
    let replaced: Vec<String> = others
        .iter()
        .filter(|s| s.is_complete())
        .map(SetDir::id)
        .collect();
    remove_all(&others);
    let origin = if replaced.is_empty() {
        Origin::Fresh
    } else {
        tracing::info!(old = ?replaced, new = %id, quarantines = carried, "replaced the pinned set of another build");
        Origin::Replaced(replaced)
    };
    Ok(Started {
        kernel,
        set: Some(set),
        origin,
    })
}

/// Copies the quarantined cgroups of the sets being replaced into the new
/// one, so that no quarantined pod gets a moment of network.
fn carry_quarantines(old: &[SetDir], kernel: &mut Kernel) -> usize {
    let mut n = 0;
    for set in old.iter().filter(|s| s.is_complete()) {
        let path = set.maps().join("QUARANTINE");
        match crate::load::quarantined_in(&path) {
            Ok(ids) => {
                for id in ids {
                    match kernel.quarantine(id) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            tracing::error!(cgroup = id, error = %e, "carrying a quarantine over")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(map = %path.display(), error = %e, "reading the old set's quarantines")
            }
        }
    }
    n
}

fn remove_all(sets: &[SetDir]) {
    for s in sets {
        if let Err(e) = s.remove() {
            tracing::error!(set = %s.path.display(), error = %e, "removing a pinned set");
        }
    }
}

/// `sensor unload`: removes every pinned set under `bpf_dir` (their programs
/// detach unless a running daemon still holds them) and the directory.
pub fn unload(bpf_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let sets = pin::sets(bpf_dir);
    for s in &sets {
        s.remove()
            .with_context(|| format!("removing {}", s.path.display()))?;
    }
    match std::fs::remove_dir(bpf_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing {}", bpf_dir.display()));
        }
    }
    Ok(sets.into_iter().map(|s| s.path).collect())
}
