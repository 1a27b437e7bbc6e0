//! Compiles loaded policies into the kernel's exec tables: one `ExecSelector`
//! per selector in evaluation order, string sets as map keys, and the metadata
//! userspace needs to turn a selector hit back into a Tetragon policy event.
use std::path::PathBuf;

use sensor_common::{
    match_kind, Config, ExecSelector, ProcState, StrFilter, MAX_SELECTORS, SLOT_BINARIES,
    STR_KEY_HEADER, STR_KEY_LEN,
};

use super::{Actions, BinaryMatch, HookPoint, PathArgType, Policy, PolicyError, StrMatch};

/// What a selector hit means for the event stream.
#[derive(Debug, Clone)]
pub struct SelectorMeta {
    pub policy_name: String,
    pub point: HookPoint,
    pub path_arg: Option<PathArgType>,
    pub actions: Actions,
    pub message: Option<String>,
    pub tags: Vec<String>,
}

/// A string map key: selector index, slot, value, zero padded.
pub type StrKey = [u8; STR_KEY_LEN];

/// Everything the loader writes into the kernel, and the metadata to read hits.
#[derive(Debug, Default)]
pub struct Compiled {
    pub selectors: Vec<ExecSelector>,
    pub meta: Vec<SelectorMeta>,
    pub equal: Vec<StrKey>,
    /// (prefix length in bits, key)
    pub prefix: Vec<(u32, StrKey)>,
    pub postfix: Vec<(u32, StrKey)>,
    pub config: Config,
    /// Namespaced policies that act on no process until pod context exists.
    pub inactive: Vec<String>,
    binaries: Vec<Option<BinaryMatch>>,
}

fn key(selector: usize, slot: u8, value: &[u8]) -> (u32, StrKey) {
    let mut k = [0u8; STR_KEY_LEN];
    k[0] = selector as u8;
    k[1] = slot;
    k[STR_KEY_HEADER..STR_KEY_HEADER + value.len()].copy_from_slice(value);
    (((STR_KEY_HEADER + value.len()) * 8) as u32, k)
}

impl Compiled {
    pub fn new(policies: &[(PathBuf, Policy)]) -> Result<Compiled, PolicyError> {
        let mut c = Compiled::default();
        let mut hook_id = 0u32;
        for (file, policy) in policies {
            if let Some(ns) = &policy.namespace {
                c.inactive
                    .push(format!("{} (namespace {ns:?})", policy.name));
                continue;
            }
            for hook in &policy.hooks {
                if hook_id as usize >= MAX_SELECTORS {
                    return Err(PolicyError {
                        file: file.clone(),
                        field: "spec".into(),
                        reason: format!(
                            "more than {MAX_SELECTORS} exec hooks across loaded policies"
                        ),
                    });
                }
                for sel in &hook.selectors {
                    let index = c.selectors.len();
                    if index >= MAX_SELECTORS {
                        return Err(PolicyError {
                            file: file.clone(),
                            field: "spec".into(),
                            reason: format!(
                                "more than {MAX_SELECTORS} exec selectors across loaded policies"
                            ),
                        });
                    }
                    let mut ks = ExecSelector {
                        hook: hook_id,
                        signal: sel.actions.signal.unwrap_or(0),
                        binaries_of_new_image: hook.binaries_of_new_image as u8,
                        ..Default::default()
                    };
                    if let Some(b) = &sel.binaries {
                        ks.binaries = c.add_values(index, SLOT_BINARIES, &b.set);
                        if b.follow_children {
                            ks.follow = 1;
                            c.config.follow_mask |= 1 << index;
                        }
                    }
                    for (i, m) in sel.path.iter().enumerate() {
                        ks.args[i] = c.add_values(index, i as u8 + 1, m);
                    }
                    ks.n_args = sel.path.len() as u8;
                    c.selectors.push(ks);
                    c.binaries.push(sel.binaries.clone());
                    c.meta.push(SelectorMeta {
                        policy_name: policy.name.clone(),
                        point: hook.point.clone(),
                        path_arg: hook.path_arg,
                        actions: sel.actions,
                        message: hook.message.clone(),
                        tags: hook.tags.clone(),
                    });
                }
                hook_id += 1;
            }
        }
        c.config.n_selectors = c.selectors.len() as u32;
        Ok(c)
    }

    fn add_values(&mut self, selector: usize, slot: u8, m: &StrMatch) -> StrFilter {
        let filter = m.op.filter();
        for v in &m.values {
            match filter.kind {
                match_kind::EQUAL => self.equal.push(key(selector, slot, v.as_bytes()).1),
                match_kind::PREFIX => self.prefix.push(key(selector, slot, v.as_bytes())),
                _ => {
                    let rev: Vec<u8> = v.bytes().rev().collect();
                    self.postfix.push(key(selector, slot, &rev));
                    self.config.need_reversed = 1;
                }
            }
        }
        filter
    }

    /// The kernel state of a process running `binary` whose parent has state
    /// `parent`, as the exec program would have computed it. Used for processes
    /// found in /proc at start.
    pub fn state_for(&self, binary: &str, parent: ProcState) -> ProcState {
        let mut bin_in = 0u64;
        for (i, b) in self.binaries.iter().enumerate() {
            if b.as_ref().is_some_and(|b| b.set.contains(binary)) {
                bin_in |= 1 << i;
            }
        }
        ProcState {
            bin_in,
            follow: parent.follow | (parent.bin_in & self.config.follow_mask),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{load_file, Loaded};

    fn compile(yaml: &str) -> Compiled {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sensor-compile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("{n}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        let mut l = Loaded::default();
        load_file(&f, &mut l).unwrap();
        Compiled::new(&l.policies).unwrap()
    }

    const FOLLOW: &str = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: f}\nspec:\n  kprobes:\n  - call: security_bprm_check\n    syscall: false\n    args: [{index: 0, type: linux_binprm}]\n    selectors:\n    - matchBinaries: [{operator: In, values: [/bin/sh], followChildren: true}]\n      matchArgs: [{index: 0, operator: Postfix, values: [/true]}]\n      matchActions: [{action: Sigkill}]\n";

    #[test]
    fn selector_tables_follow_the_policy() {
        let c = compile(FOLLOW);
        assert_eq!(c.selectors.len(), 1);
        let s = c.selectors[0];
        assert_eq!(s.signal, 9);
        assert_eq!(
            (s.binaries.kind, s.binaries.negate, s.follow),
            (match_kind::EQUAL, 0, 1)
        );
        assert_eq!((s.n_args, s.args[0].kind), (1, match_kind::POSTFIX));
        assert_eq!(c.config.follow_mask, 1);
        assert_eq!(c.config.need_reversed, 1);
        assert_eq!(&c.equal[0][..9], b"\0\0/bin/sh");
        let (bits, k) = c.postfix[0];
        assert_eq!(bits, (2 + 5) * 8);
        assert_eq!(&k[..7], b"\0\x01eurt/");
    }

    #[test]
    fn state_for_inherits_follow_from_a_matching_parent() {
        let c = compile(FOLLOW);
        let sh = c.state_for("/bin/sh", ProcState::default());
        assert_eq!(
            sh,
            ProcState {
                bin_in: 1,
                follow: 0
            }
        );
        let child = c.state_for("/usr/bin/env", sh);
        assert_eq!(
            child,
            ProcState {
                bin_in: 0,
                follow: 1
            }
        );
        let grandchild = c.state_for("/usr/bin/true", child);
        assert_eq!(grandchild.follow, 1);
    }
}
