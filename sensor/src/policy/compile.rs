//! Compiles loaded policies into the kernel's tables: one `ExecSelector` or
//! `NetSelector` per selector in evaluation order, value sets as map keys, and
//! the metadata userspace needs to turn a selector hit back into a Tetragon
//! policy event.
use std::net::IpAddr;
use std::path::PathBuf;

use sensor_common::{
    match_kind, net_kind, Config, ExecSelector, NetFilter, NetSelector, NetValueKey, ProcState,
    StrFilter, SysNr, SysSelector, MAX_SELECTORS, NET_ADDR_KEY_LEN, NET_SELECTOR_BASE,
    SLOT_BINARIES, STR_KEY_HEADER, STR_KEY_LEN,
};

use super::compile_sys::SysStrings;

use super::{
    Actions, BinaryMatch, EventArg, Hook, HookFamily, HookPoint, Mode, NetMatch, Policy,
    PolicyError, Selector, StrMatch,
};

/// What a selector hit means for the event stream.
#[derive(Debug, Clone)]
pub struct SelectorMeta {
    pub policy_name: String,
    pub point: HookPoint,
    pub args: Vec<EventArg>,
    /// What events carry as the hook's return value (`returnArg`).
    pub return_arg: super::ReturnArg,
    /// A syscall hook's return (`return: true`), as this type.
    pub return_type: Option<super::IntType>,
    /// The policy's actions, as written (and as events report them).
    pub actions: Actions,
    /// Monitor mode: the kernel carried out none of them.
    pub monitor: bool,
    pub message: Option<String>,
    pub tags: Vec<String>,
}

/// The pods a pod-scoped policy acts on.
#[derive(Debug, Clone)]
pub struct Scope {
    pub policy: String,
    pub namespace: Option<String>,
    pub selector: Option<super::LabelSelector>,
}

impl Scope {
    pub fn selects(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(namespace, labels))
    }
}

/// A string map key: selector index, slot, value, zero padded.
pub type StrKey = [u8; STR_KEY_LEN];
/// An address set key: selector, slot, family, 0, address.
pub type AddrKey = [u8; NET_ADDR_KEY_LEN];

/// Everything the loader writes into the kernel, and the metadata to read hits.
#[derive(Debug, Default)]
pub struct Compiled {
    pub selectors: Vec<ExecSelector>,
    pub meta: Vec<SelectorMeta>,
    pub net_selectors: Vec<NetSelector>,
    pub net_meta: Vec<SelectorMeta>,
    pub sys_selectors: Vec<SysSelector>,
    pub sys_meta: Vec<SelectorMeta>,
    /// Per syscall number, the syscall selectors that apply and what is
    /// read from user memory; `SYSCALL_NRS` entries.
    pub sys_nrs: Vec<SysNr>,
    /// Value sets of the syscall selectors' string filters.
    pub sys_strings: SysStrings,
    pub equal: Vec<StrKey>,
    /// (prefix length in bits, key)
    pub prefix: Vec<(u32, StrKey)>,
    pub postfix: Vec<(u32, StrKey)>,
    pub net_addrs: Vec<(u32, AddrKey)>,
    pub net_values: Vec<NetValueKey>,
    pub config: Config,
    /// Pod-scoped policies; scope `i + 1` in selectors is `scopes[i]`.
    pub scopes: Vec<Scope>,
    binaries: Vec<Option<BinaryMatch>>,
    net_binaries: Vec<Option<BinaryMatch>>,
    pub(super) sys_binaries: Vec<Option<BinaryMatch>>,
}

fn key(selector: u8, slot: u8, value: &[u8]) -> (u32, StrKey) {
    let mut k = [0u8; STR_KEY_LEN];
    k[0] = selector;
    k[1] = slot;
    k[STR_KEY_HEADER..STR_KEY_HEADER + value.len()].copy_from_slice(value);
    (((STR_KEY_HEADER + value.len()) * 8) as u32, k)
}

fn limit(file: &std::path::Path, what: &str) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        field: "spec".into(),
        reason: format!("more than {MAX_SELECTORS} {what} across loaded policies"),
    }
}

fn meta(policy: &Policy, hook: &Hook, sel: &Selector) -> SelectorMeta {
    SelectorMeta {
        policy_name: policy.name.clone(),
        point: hook.point.clone(),
        args: hook.args.clone(),
        return_arg: hook.return_arg,
        return_type: hook.return_type,
        actions: sel.actions,
        monitor: policy.mode == Mode::Monitor,
        message: hook.message.clone(),
        tags: hook.tags.clone(),
    }
}

/// What the kernel carries out of a selector: in monitor mode, no signal
/// and no Override; the event (from the selector's meta) still names them.
fn enforced(sel: &Selector, mode: Mode) -> std::borrow::Cow<'_, Selector> {
    match mode {
        Mode::Enforce => std::borrow::Cow::Borrowed(sel),
        Mode::Monitor => {
            let mut s = sel.clone();
            s.actions.signal = None;
            s.actions.errno = None;
            s.actions.post = true;
            std::borrow::Cow::Owned(s)
        }
    }
}

impl Compiled {
    pub fn new(policies: &[(PathBuf, Policy)]) -> Result<Compiled, PolicyError> {
        let mut c = Compiled {
            sys_nrs: super::compile_sys::empty_nrs(),
            ..Compiled::default()
        };
        let (mut exec_hooks, mut net_hooks, mut sys_hooks) = (0u32, 0u32, 0u32);
        for (file, policy) in policies {
            let scope = if policy.namespace.is_some() || policy.pod_selector.is_some() {
                if c.scopes.len() >= sensor_common::MAX_SCOPES {
                    return Err(limit(file, "pod-scoped policies"));
                }
                c.scopes.push(Scope {
                    policy: policy.name.clone(),
                    namespace: policy.namespace.clone(),
                    selector: policy.pod_selector.clone(),
                });
                c.scopes.len() as u8
            } else {
                0
            };
            for hook in &policy.hooks {
                let (hooks, kind) = match hook.family {
                    HookFamily::Exec => (&mut exec_hooks, "exec hooks"),
                    HookFamily::Connect => (&mut net_hooks, "connect hooks"),
                    HookFamily::Syscall => (&mut sys_hooks, "syscall hooks"),
                };
                if *hooks as usize >= MAX_SELECTORS {
                    return Err(limit(file, kind));
                }
                let hook_id = *hooks;
                *hooks += 1;
                for sel in &hook.selectors {
                    match hook.family {
                        HookFamily::Exec => {
                            if c.selectors.len() >= MAX_SELECTORS {
                                return Err(limit(file, "exec selectors"));
                            }
                            c.add_exec(hook_id, hook, &enforced(sel, policy.mode), scope);
                            c.meta.push(meta(policy, hook, sel));
                        }
                        HookFamily::Connect => {
                            if c.net_selectors.len() >= MAX_SELECTORS {
                                return Err(limit(file, "connect selectors"));
                            }
                            c.add_net(hook_id, hook.net_ops, &enforced(sel, policy.mode), scope);
                            c.net_meta.push(meta(policy, hook, sel));
                        }
                        HookFamily::Syscall => {
                            if c.sys_selectors.len() >= MAX_SELECTORS {
                                return Err(limit(file, "syscall selectors"));
                            }
                            c.add_sys(hook_id, hook, &enforced(sel, policy.mode), scope)
                                .map_err(|reason| PolicyError {
                                    file: file.clone(),
                                    field: hook.field.clone(),
                                    reason,
                                })?;
                            c.sys_meta.push(meta(policy, hook, sel));
                        }
                    }
                }
            }
        }
        c.config.n_selectors = c.selectors.len() as u32;
        c.config.n_net_selectors = c.net_selectors.len() as u32;
        c.config.n_sys_selectors = c.sys_selectors.len() as u32;
        if let (Some((file, _)), Some(what)) = (policies.last(), c.sys_strings.over_limit()) {
            return Err(PolicyError {
                file: file.clone(),
                field: "spec".into(),
                reason: what,
            });
        }
        c.config.n_scopes = c.scopes.len() as u32;
        Ok(c)
    }

    fn add_exec(&mut self, hook_id: u32, hook: &Hook, sel: &Selector, scope: u8) {
        let index = self.selectors.len();
        let mut ks = ExecSelector {
            hook: hook_id,
            scope,
            signal: sel.actions.signal.unwrap_or(0),
            binaries_of_new_image: hook.binaries_of_new_image as u8,
            errno: sel.actions.errno.unwrap_or(0),
            // Only a posted event carries the hash.
            ima_hash: (sel.actions.ima_hash && sel.actions.post) as u8,
            ..Default::default()
        };
        if ks.errno != 0 || ks.ima_hash != 0 {
            self.config.n_override += 1;
        }
        if let Some(b) = &sel.binaries {
            ks.binaries = self.add_values(index as u8, SLOT_BINARIES, &b.set);
            if b.follow_children {
                ks.follow = 1;
                self.config.follow_mask |= 1 << index;
            }
        }
        for (i, m) in sel.path.iter().enumerate() {
            ks.args[i] = self.add_values(index as u8, i as u8 + 1, m);
        }
        ks.n_args = sel.path.len() as u8;
        self.selectors.push(ks);
        self.binaries.push(sel.binaries.clone());
    }

    fn add_net(&mut self, hook_id: u32, ops: u16, sel: &Selector, scope: u8) {
        let index = self.net_selectors.len();
        let id = index as u8;
        self.config.net_ops |= ops as u32;
        let mut ns = NetSelector {
            hook: hook_id,
            scope,
            ops,
            signal: sel.actions.signal.unwrap_or(0),
            errno: sel.actions.errno.unwrap_or(0),
            ..Default::default()
        };
        if let Some(b) = &sel.binaries {
            ns.binaries = self.add_values(NET_SELECTOR_BASE + id, SLOT_BINARIES, &b.set);
            if b.follow_children {
                ns.follow = 1;
                self.config.net_follow_mask |= 1 << index;
            }
        }
        for (i, m) in sel.net.iter().enumerate() {
            let slot = i as u8 + 1;
            let value = |v: u32| NetValueKey {
                selector: id,
                slot,
                _pad: 0,
                value: v,
            };
            let (kind, negate) = match m {
                NetMatch::Addr { dest, negate, nets } => {
                    for n in nets {
                        self.net_addrs.push(addr_key(id, slot, n.addr, n.prefix));
                    }
                    (
                        if *dest {
                            net_kind::DADDR
                        } else {
                            net_kind::SADDR
                        },
                        *negate,
                    )
                }
                NetMatch::Port {
                    dest,
                    negate,
                    ports,
                } => {
                    self.net_values
                        .extend(ports.iter().map(|p| value(*p as u32)));
                    (
                        if *dest {
                            net_kind::DPORT
                        } else {
                            net_kind::SPORT
                        },
                        *negate,
                    )
                }
                NetMatch::PortPriv { dest, negate } => (
                    if *dest {
                        net_kind::DPORT_PRIV
                    } else {
                        net_kind::SPORT_PRIV
                    },
                    *negate,
                ),
                NetMatch::Protocol(ps) => {
                    self.net_values.extend(ps.iter().map(|p| value(*p as u32)));
                    (net_kind::PROTOCOL, false)
                }
                NetMatch::Family(fs) => {
                    self.net_values.extend(fs.iter().map(|f| value(*f as u32)));
                    (net_kind::FAMILY, false)
                }
                NetMatch::State(ss) => {
                    self.net_values.extend(ss.iter().map(|s| value(*s as u32)));
                    (net_kind::STATE, false)
                }
                NetMatch::NewState { negate, states } => {
                    self.net_values
                        .extend(states.iter().map(|s| value(*s as u32)));
                    (net_kind::NEW_STATE, *negate)
                }
            };
            ns.filters[i] = NetFilter {
                kind,
                negate: negate as u8,
            };
        }
        ns.n_filters = sel.net.len() as u8;
        self.net_selectors.push(ns);
        self.net_binaries.push(sel.binaries.clone());
    }

    pub(super) fn add_values(&mut self, selector: u8, slot: u8, m: &StrMatch) -> StrFilter {
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
        let bits = |set: &[Option<BinaryMatch>]| -> u64 {
            set.iter()
                .enumerate()
                .filter(|(_, b)| b.as_ref().is_some_and(|b| b.set.contains(binary)))
                .fold(0, |acc, (i, _)| acc | 1 << i)
        };
        ProcState {
            bin_in: bits(&self.binaries),
            follow: parent.follow | (parent.bin_in & self.config.follow_mask),
            net_bin_in: bits(&self.net_binaries),
            net_follow: parent.net_follow | (parent.net_bin_in & self.config.net_follow_mask),
            sys_bin_in: bits(&self.sys_binaries),
            sys_follow: parent.sys_follow | (parent.sys_bin_in & self.config.sys_follow_mask),
        }
    }
}

/// The LPM key of an address set entry; prefix bits count the 4 header bytes.
fn addr_key(selector: u8, slot: u8, addr: IpAddr, prefix: u8) -> (u32, AddrKey) {
    let mut k = [0u8; NET_ADDR_KEY_LEN];
    k[0] = selector;
    k[1] = slot;
    match addr {
        IpAddr::V4(a) => {
            k[2] = 4;
            k[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            k[2] = 6;
            k[4..20].copy_from_slice(&a.octets());
        }
    }
    (32 + prefix as u32, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::{load_file, Loaded};
    use sensor_common::net_ops;

    fn compile(yaml: &str) -> Compiled {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sensor-compile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("{n}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        let mut l = Loaded::default();
        load_file(&f, &Default::default(), &mut l).unwrap();
        Compiled::new(&l.policies).unwrap()
    }

    const FOLLOW: &str = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: f}\nspec:\n  kprobes:\n  - call: security_bprm_check\n    syscall: false\n    args: [{index: 0, type: linux_binprm}]\n    selectors:\n    - matchBinaries: [{operator: In, values: [/bin/sh], followChildren: true}]\n      matchArgs: [{index: 0, operator: Postfix, values: [/true]}]\n      matchActions: [{action: Sigkill}]\n";

    #[test]
    fn network_selectors_act_on_their_hooks_records_only() {
        let hook = |call: &str| {
            format!("  - call: {call}\n    syscall: false\n    args: [{{index: 0, type: sock}}]\n    selectors:\n    - matchArgs: [{{index: 0, operator: DPort, values: [\"80\"]}}]\n")
        };
        let c = compile(&format!(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: n}}\nspec:\n  kprobes:\n{}{}{}",
            hook("tcp_connect"),
            hook("tcp_close"),
            hook("tcp_sendmsg")
        ));
        let ops: Vec<u16> = c.net_selectors.iter().map(|s| s.ops).collect();
        assert_eq!(ops, [net_ops::CONNECT, net_ops::CLOSE, net_ops::SEND]);
        assert_eq!(
            c.config.net_ops,
            (net_ops::CONNECT | net_ops::CLOSE | net_ops::SEND) as u32,
            "no listen selector: the listen program stays detached"
        );
        let hooks: Vec<u32> = c.net_selectors.iter().map(|s| s.hook).collect();
        assert_eq!(hooks, [0, 1, 2], "first match is per hook");
    }

    #[test]
    fn state_filters_compile_to_their_value_sets() {
        let c = compile("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: s}\nspec:\n  kprobes:\n  - call: tcp_set_state\n    syscall: false\n    args: [{index: 0, type: sock}, {index: 1, type: int}]\n    selectors:\n    - matchArgs:\n      - {index: 0, operator: State, values: [TCP_SYN_RECV]}\n      - {index: 1, operator: NotEqual, values: [TCP_CLOSE, \"1\"]}\n  - call: sk_alloc\n    syscall: false\n    args: [{index: 1, type: int}]\n    selectors:\n    - matchArgs: [{index: 1, operator: Equal, values: [\"10\"]}]\n");
        let s = c.net_selectors[0];
        assert_eq!(s.ops, net_ops::STATE);
        let kinds: Vec<(u8, u8)> = s.filters[..s.n_filters as usize]
            .iter()
            .map(|f| (f.kind, f.negate))
            .collect();
        assert_eq!(kinds, [(net_kind::STATE, 0), (net_kind::NEW_STATE, 1)]);
        let values = |sel: u8, slot: u8| {
            let mut v: Vec<u32> = c
                .net_values
                .iter()
                .filter(|k| k.selector == sel && k.slot == slot)
                .map(|k| k.value)
                .collect();
            v.sort();
            v
        };
        let (s0, s1) = (
            sensor_common::net_selector(0, 0),
            sensor_common::net_selector(1, 0),
        );
        assert_eq!(values(s0, 1), [3], "TCP_SYN_RECV");
        assert_eq!(values(s0, 2), [1, 7], "TCP_ESTABLISHED and TCP_CLOSE");
        assert_eq!(c.net_selectors[1].ops, net_ops::ALLOC);
        assert_eq!(c.net_selectors[1].filters[0].kind, net_kind::FAMILY);
        assert_eq!(values(s1, 1), [10]);
        assert_eq!(c.config.net_ops, (net_ops::STATE | net_ops::ALLOC) as u32);
    }

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
                ..Default::default()
            }
        );
        let child = c.state_for("/usr/bin/env", sh);
        assert_eq!(
            child,
            ProcState {
                follow: 1,
                ..Default::default()
            }
        );
        let grandchild = c.state_for("/usr/bin/true", child);
        assert_eq!(grandchild.follow, 1);
    }
}
