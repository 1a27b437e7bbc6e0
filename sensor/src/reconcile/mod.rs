//! The reconciler: one set of policy documents, whatever their source
//! (`--policy` files, the `--policy-dir` files that `dir` watches, the
//! control API, TracingPolicy resources), and the one rule for changing it:
//! a change is taken only if the whole set still compiles and fits this
//! kernel; otherwise nothing changes and the error says why (file or name,
//! field, reason). Disabled policies stay in the set but are not compiled;
//! a mode set through the API overrides the policy's own `policy-mode`.
pub mod dir;
pub mod resources;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::brain::Rule;
use crate::documents::Loaded;
use crate::load::probe::Plan;
use crate::policy::{Compiled, Mode, Policy, PolicyError};

/// Where documents came from: their key in the set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `--policy FILE`: fixed for the daemon's life.
    Flag(PathBuf),
    /// A file of `--policy-dir`.
    Dir(PathBuf),
    /// Added through the control API, by policy name.
    Api(String),
    /// A TracingPolicy or TracingPolicyNamespaced resource (`ns/name`, or
    /// `name` for the cluster-wide kind).
    Resource(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(p) | Source::Dir(p) => write!(f, "{}", p.display()),
            Source::Api(n) => write!(f, "api:{n}"),
            Source::Resource(n) => write!(f, "resource:{n}"),
        }
    }
}

/// What the kernel and the brain enforce now.
pub struct Active {
    pub compiled: Compiled,
    pub rules: Vec<Rule>,
}

/// The documents in force, by source.
pub struct PolicySet {
    docs: BTreeMap<Source, Loaded>,
    plan: Plan,
    disabled: BTreeSet<String>,
    modes: BTreeMap<String, Mode>,
    /// Directory files and resources whose newest version was refused
    /// (their last good version, if any, stays in force): Tetragon's
    /// `load_error` policies.
    refused: BTreeSet<Source>,
}

impl PolicySet {
    pub fn new(plan: Plan) -> PolicySet {
        PolicySet {
            docs: BTreeMap::new(),
            plan,
            disabled: BTreeSet::new(),
            modes: BTreeMap::new(),
            refused: BTreeSet::new(),
        }
    }

    /// Compiles the enabled policies and collects the brain rules.
    pub fn compile(&self) -> Result<Active, PolicyError> {
        let policies: Vec<(PathBuf, Policy)> = self
            .docs
            .values()
            .flat_map(|l| l.policies.iter())
            .filter(|(_, p)| !self.disabled.contains(&p.name))
            .map(|(f, p)| {
                let mut p = p.clone();
                p.mode = self.mode_of(&p);
                (f.clone(), p)
            })
            .collect();
        crate::policy::fits_kernel(&policies, &self.plan)?;
        let compiled = Compiled::new(&policies)?;
        let rules = self
            .docs
            .values()
            .flat_map(|l| l.rules.iter().map(|(_, r)| r.clone()))
            .collect();
        Ok(Active { compiled, rules })
    }

    /// Replaces the documents of `source` (removes them for `None`) if the
    /// whole set still compiles; otherwise leaves the set as it was.
    pub fn set(&mut self, source: Source, docs: Option<Loaded>) -> Result<Active, PolicyError> {
        if let Some(d) = &docs {
            self.check_names(&source, d)?;
        }
        let old = match docs {
            Some(d) => self.docs.insert(source.clone(), d),
            None => self.docs.remove(&source),
        };
        let compiled = self.compile().inspect_err(|_| {
            match old {
                Some(o) => self.docs.insert(source.clone(), o),
                None => self.docs.remove(&source),
            };
        })?;
        // A deleted policy's mode and enablement go with it; a replaced one
        // keeps them.
        let names: BTreeSet<String> = self.policies().map(|(_, p)| p.name.clone()).collect();
        self.modes.retain(|n, _| names.contains(n));
        self.disabled.retain(|n| names.contains(n));
        self.refused.remove(&source);
        Ok(compiled)
    }

    /// Notes that the newest version of `source` was refused; taking or
    /// removing the source clears it.
    pub fn refused(&mut self, source: Source) {
        self.refused.insert(source);
    }

    /// Forgets the refusals of the sources `gone` says no longer exist.
    pub fn forget_refused(&mut self, gone: impl Fn(&Source) -> bool) {
        self.refused.retain(|s| !gone(s));
    }

    /// How many sources' newest versions are refused.
    pub fn refused_count(&self) -> usize {
        self.refused.len()
    }

    /// Policy names are unique across sources (Tetragon's rule): the API and
    /// the mode and enable calls name policies.
    fn check_names(&self, source: &Source, d: &Loaded) -> Result<(), PolicyError> {
        for (file, p) in &d.policies {
            if let Some(other) = self.source_of(&p.name).filter(|s| *s != source) {
                return Err(PolicyError {
                    file: file.clone(),
                    field: "metadata.name".into(),
                    reason: format!("a policy named {} is already loaded from {other}", p.name),
                });
            }
        }
        Ok(())
    }

    /// Where the policy named `name` came from.
    pub fn source_of(&self, name: &str) -> Option<&Source> {
        self.docs
            .iter()
            .find(|(_, l)| l.policies.iter().any(|(_, p)| p.name == name))
            .map(|(s, _)| s)
    }

    /// Turns a policy off (kept, not enforced) or back on, if the set then
    /// compiles.
    pub fn enable(&mut self, name: &str, on: bool) -> Result<Active, PolicyError> {
        let changed = if on {
            self.disabled.remove(name)
        } else {
            self.disabled.insert(name.to_string())
        };
        self.compile().inspect_err(|_| {
            if changed {
                if on {
                    self.disabled.insert(name.to_string());
                } else {
                    self.disabled.remove(name);
                }
            }
        })
    }

    /// Sets a policy's mode, if the set then compiles.
    pub fn set_mode(&mut self, name: &str, mode: Mode) -> Result<Active, PolicyError> {
        let old = self.modes.insert(name.to_string(), mode);
        self.compile().inspect_err(|_| {
            match old {
                Some(m) => self.modes.insert(name.to_string(), m),
                None => self.modes.remove(name),
            };
        })
    }

    /// The mode a policy is in: the API's, else its own.
    pub fn mode_of(&self, p: &Policy) -> Mode {
        self.modes.get(&p.name).copied().unwrap_or(p.mode)
    }

    pub fn is_enabled(&self, name: &str) -> bool {
        !self.disabled.contains(name)
    }

    /// Every policy with its source, in source order.
    pub fn policies(&self) -> impl Iterator<Item = (&Source, &Policy)> {
        self.docs
            .iter()
            .flat_map(|(s, l)| l.policies.iter().map(move |(_, p)| (s, p)))
    }

    /// The sources whose key is a file of the policy directory.
    pub fn dir_files(&self) -> Vec<PathBuf> {
        self.docs
            .keys()
            .filter_map(|s| match s {
                Source::Dir(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::probe::Form;

    fn plan() -> Plan {
        Plan {
            exec: Form::Modern,
            connect: Form::Modern,
            lsm: false,
            connect_errno_missing: None,
            lsm_missing: Some("no BPF-LSM here"),
            ima_missing: Some("no BPF-LSM here"),
        }
    }

    fn doc(name: &str, action: &str) -> Loaded {
        let yaml = format!(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: {name}}}\nspec:\n  kprobes:\n  - call: security_bprm_check\n    syscall: false\n    args: [{{index: 0, type: linux_binprm}}]\n    selectors:\n    - matchArgs: [{{index: 0, operator: Equal, values: [/usr/bin/{name}]}}]\n      matchActions: [{action}]\n"
        );
        let mut l = Loaded::default();
        crate::documents::load_text(&PathBuf::from(name), &yaml, &Default::default(), &mut l)
            .expect("a valid policy");
        l
    }

    #[test]
    fn a_change_that_does_not_fit_leaves_the_set_as_it_was() {
        let mut set = PolicySet::new(plan());
        set.set(Source::Api("a".into()), Some(doc("a", "{action: Sigkill}")))
            .unwrap();
        // Override on exec needs BPF-LSM, which this plan lacks.
        let refused = set.set(
            Source::Api("a".into()),
            Some(doc("a", "{action: Override, argError: -1}")),
        );
        assert!(refused.err().expect("refused").reason.contains("BPF-LSM"));
        let active = set.compile().unwrap();
        assert_eq!(active.compiled.selectors.len(), 1);
        assert_eq!(
            active.compiled.selectors[0].signal, 9,
            "the old version stays"
        );
    }

    #[test]
    fn names_are_unique_across_sources() {
        let mut set = PolicySet::new(plan());
        set.set(
            Source::Dir("/p/a.yaml".into()),
            Some(doc("a", "{action: Post}")),
        )
        .unwrap();
        let e = set
            .set(Source::Api("a".into()), Some(doc("a", "{action: Post}")))
            .err()
            .expect("refused");
        assert_eq!(e.field, "metadata.name");
        assert!(e.reason.contains("/p/a.yaml"), "{}", e.reason);
    }

    #[test]
    fn monitor_mode_keeps_the_hit_and_drops_the_kill_and_goes_with_a_deleted_policy() {
        let mut set = PolicySet::new(plan());
        set.set(Source::Api("a".into()), Some(doc("a", "{action: Sigkill}")))
            .unwrap();
        let a = set.set_mode("a", Mode::Monitor).unwrap();
        assert_eq!(
            a.compiled.selectors[0].signal, 0,
            "the kernel does not kill"
        );
        assert_eq!(
            a.compiled.meta[0].actions.signal,
            Some(9),
            "the event says it would"
        );
        assert!(a.compiled.meta[0].monitor);
        set.set(Source::Api("a".into()), None).unwrap();
        set.set(Source::Api("a".into()), Some(doc("a", "{action: Sigkill}")))
            .unwrap();
        assert_eq!(
            set.compile().unwrap().compiled.selectors[0].signal,
            9,
            "a policy added again starts in its own mode"
        );
    }
}
