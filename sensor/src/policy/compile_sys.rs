//! Compiles syscall selectors: the `SysSelector` table, what each syscall
//! number reads from user memory (`SysNr`), and the value sets of string
//! filters as masks of selectors, keyed by (argument, string).
use std::collections::BTreeMap;

use sensor_common::{
    arg_read, ns_kind, pid_flags, sys_needs, ArgStrFilter, IntFilter, NsFilter, PidFilter, SysNr,
    SysSelector, INT_VALUES, NS_VALUES, PID_VALUES, SLOT_SYS_BINARIES, STR_KEY_HEADER, STR_KEY_LEN,
    SYSCALL_NRS,
};

use super::compile::{Compiled, StrKey};
use super::{EventArg, Hook, IntMatch, NsValue, Selector, StrOp, UserRead};

/// String values of syscall filters: per key, the selectors that hold it.
#[derive(Debug, Default)]
pub struct SysStrings {
    pub equal: BTreeMap<StrKey, u64>,
    /// Keyed by (prefix length in bits, key).
    pub prefix: BTreeMap<(u32, StrKey), u64>,
    pub postfix: BTreeMap<(u32, StrKey), u64>,
}

/// String values of syscall filters a bank holds, per operator family (the
/// maps hold twice as many: two banks during a switch).
pub const MAX_SYS_STRINGS: usize = 512;

impl SysStrings {
    /// Why the values do not fit the kernel's maps, if they do not.
    pub fn over_limit(&self) -> Option<String> {
        let most = self
            .equal
            .len()
            .max(self.prefix.len())
            .max(self.postfix.len());
        (most > MAX_SYS_STRINGS).then(|| {
            format!("more than {MAX_SYS_STRINGS} string values of one operator family on syscall arguments across loaded policies")
        })
    }

    /// The trie entries as the kernel needs them: a trie answers with the
    /// longest stored prefix only, so each entry also carries the selectors
    /// of the shorter entries it extends.
    pub fn closed(set: &BTreeMap<(u32, StrKey), u64>) -> Vec<(u32, StrKey, u64)> {
        set.iter()
            .map(|(&(bits, k), &mask)| {
                let len = bits as usize / 8;
                let inherited = set
                    .iter()
                    .filter(|((b, short), _)| {
                        let n = *b as usize / 8;
                        n < len && short[..n] == k[..n]
                    })
                    .fold(0, |acc, (_, m)| acc | m);
                (bits, k, mask | inherited)
            })
            .collect()
    }
}

fn arg_key(reg: u8, value: &[u8]) -> (u32, StrKey) {
    let mut k = [0u8; STR_KEY_LEN];
    k[1] = reg;
    k[STR_KEY_HEADER..STR_KEY_HEADER + value.len()].copy_from_slice(value);
    (((STR_KEY_HEADER + value.len()) * 8) as u32, k)
}

impl Compiled {
    /// Whether a syscall hook waits for returns (the `sys_exit` program).
    pub fn sys_returns(&self) -> bool {
        self.sys_selectors.iter().any(|s| s.returns != 0)
    }

    /// Adds syscall selector `sel` of `hook`; an error is the reason two
    /// hooks on one syscall cannot share it.
    pub(super) fn add_sys(
        &mut self,
        hook_id: u32,
        hook: &Hook,
        sel: &Selector,
        scope: u8,
    ) -> Result<(), String> {
        let index = self.sys_selectors.len();
        let bit = 1u64 << index;
        let mut ss = SysSelector {
            hook: hook_id,
            scope,
            signal: sel.actions.signal.unwrap_or(0),
            ..Default::default()
        };
        if let Some(b) = &sel.binaries {
            ss.binaries = self.add_values(index as u8, SLOT_SYS_BINARIES, &b.set);
            if b.follow_children {
                ss.follow = 1;
                self.config.sys_follow_mask |= bit;
            }
        }
        for (i, m) in sel.ints.iter().enumerate() {
            ss.filters[i] = int_filter(m);
        }
        ss.n_filters = sel.ints.len() as u8;
        ss.returns = hook.return_type.is_some() as u8;
        if let Some(m) = &sel.ret {
            ss.ret = int_filter(m);
        }
        for (i, m) in sel.strs.iter().enumerate() {
            ss.strs[i] = ArgStrFilter {
                arg: m.reg,
                _pad: 0,
                filter: m.set.op.filter(),
            };
            for v in &m.set.values {
                match m.set.op {
                    StrOp::Equal | StrOp::NotEqual => {
                        *self
                            .sys_strings
                            .equal
                            .entry(arg_key(m.reg, v.as_bytes()).1)
                            .or_default() |= bit
                    }
                    StrOp::Prefix | StrOp::NotPrefix => {
                        *self
                            .sys_strings
                            .prefix
                            .entry(arg_key(m.reg, v.as_bytes()))
                            .or_default() |= bit
                    }
                    StrOp::Postfix | StrOp::NotPostfix => {
                        let rev: Vec<u8> = v.bytes().rev().collect();
                        *self
                            .sys_strings
                            .postfix
                            .entry(arg_key(m.reg, &rev))
                            .or_default() |= bit
                    }
                }
            }
        }
        ss.n_strs = sel.strs.len() as u8;
        for (i, p) in sel.pids.iter().enumerate() {
            let mut values = [0u32; PID_VALUES];
            values[..p.values.len()].copy_from_slice(&p.values);
            ss.pids[i] = PidFilter {
                negate: p.negate as u8,
                flags: if p.namespace { pid_flags::NAMESPACE } else { 0 }
                    | if p.follow_forks { pid_flags::FOLLOW } else { 0 },
                n: p.values.len() as u8,
                _pad: 0,
                values,
            };
        }
        ss.n_pids = sel.pids.len() as u8;
        for (i, m) in sel.namespaces.iter().enumerate() {
            let mut values = [0u32; NS_VALUES];
            for (v, want) in values.iter_mut().zip(&m.values) {
                *v = namespace_inode(m.kind, *want)?;
            }
            ss.ns[i] = NsFilter {
                kind: m.kind as u8,
                negate: m.negate as u8,
                n: m.values.len() as u8,
                _pad: 0,
                values,
            };
        }
        ss.n_ns = sel.namespaces.len() as u8;
        let reads = reads(hook);
        let matched = sel.strs.iter().fold(0u8, |acc, m| acc | 1 << m.reg);
        for &nr in &hook.syscalls {
            let admitted = sel.numbers.as_ref().is_none_or(|n| n.contains(&nr));
            let Some(entry) = self.sys_nrs.get_mut(nr as usize) else {
                continue;
            };
            if !admitted {
                continue;
            }
            entry.selectors |= bit;
            entry.matched |= matched;
            if !sel.pids.is_empty() {
                entry.needs |= sys_needs::LINEAGE;
            }
            if !sel.namespaces.is_empty() {
                entry.needs |= sys_needs::NAMESPACES;
            }
            merge_reads(entry, &reads, nr)?;
        }
        self.sys_selectors.push(ss);
        self.sys_binaries.push(sel.binaries.clone());
        Ok(())
    }
}

/// The inode number of namespace `want` of kind `kind`. `host_ns` is the
/// kernel's initial namespace of that kind: most have a fixed inode
/// number (`PROC_*_INIT_INO`, the same on every kernel since 5.6), read
/// here without asking anyone; the initial network and mount namespaces'
/// are numbered at boot, so they are read from the node's PID 1, which
/// needs the host's PID namespace and the right to inspect PID 1.
fn namespace_inode(kind: usize, want: NsValue) -> Result<u32, String> {
    match want {
        NsValue::Inode(n) => Ok(n),
        NsValue::Host => host_namespace(kind),
    }
}

fn host_namespace(kind: usize) -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    let fixed = match kind {
        ns_kind::IPC => Some(0xEFFF_FFFF),
        ns_kind::UTS => Some(0xEFFF_FFFE),
        ns_kind::USER => Some(0xEFFF_FFFD),
        ns_kind::PID | ns_kind::PID_FOR_CHILDREN => Some(0xEFFF_FFFC),
        ns_kind::CGROUP => Some(0xEFFF_FFFB),
        ns_kind::TIME | ns_kind::TIME_FOR_CHILDREN => Some(0xEFFF_FFFA),
        _ => None,
    };
    if let Some(inode) = fixed {
        return Ok(inode);
    }
    let file = super::syscall_filters::NAMESPACES
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map_or("none", |(_, _, f)| *f);
    let path = format!("/proc/1/ns/{file}");
    std::fs::metadata(&path)
        .map(|m| m.ino() as u32)
        .map_err(|e| format!("host_ns: the host's {file} namespace is read from {path} (the node's PID 1: the daemon needs the host's PID namespace and may inspect PID 1): {e}"))
}

/// An integer filter as the kernel compares it.
fn int_filter(m: &IntMatch) -> IntFilter {
    let (width32, signed) = m.ty.shape();
    let mut values = [0u64; INT_VALUES];
    for (v, raw) in values.iter_mut().zip(&m.values) {
        // As the kernel reads the argument: a 32-bit value's low half,
        // sign-extended if signed.
        *v = match (width32, signed) {
            (true, true) => *raw as u32 as i32 as i64 as u64,
            (true, false) => *raw as u32 as u64,
            _ => *raw,
        };
    }
    IntFilter {
        arg: m.reg,
        op: m.op,
        n: m.values.len() as u8,
        width32: width32 as u8,
        signed: signed as u8,
        _pad: [0; 3],
        values,
    }
}

/// How `hook` reads each argument from user memory.
fn reads(hook: &Hook) -> [u8; sensor_common::SYSCALL_ARGS] {
    let mut out = [arg_read::NONE; sensor_common::SYSCALL_ARGS];
    for a in &hook.args {
        if let EventArg::SyscallUser { reg, read } = a {
            out[*reg as usize] = match read {
                UserRead::String => arg_read::STRING,
                UserRead::Buffer { size_reg } => arg_read::BUFFER + size_reg,
                UserRead::Fd => arg_read::FD,
            };
        }
    }
    out
}

/// One syscall number's reads, as every hook on it needs them: an
/// argument is read one way, whichever hooks read it.
fn merge_reads(entry: &mut SysNr, reads: &[u8], nr: u32) -> Result<(), String> {
    for (i, (have, want)) in entry.reads.iter_mut().zip(reads).enumerate() {
        match (*have, *want) {
            (_, arg_read::NONE) => {}
            (arg_read::NONE, w) => *have = w,
            (h, w) if h == w => {}
            _ => {
                let name = super::syscalls::function_name(nr).unwrap_or_default();
                return Err(format!(
                    "argument {i} of {name} is read in two ways (string, char_buf, or fd) by the loaded hooks"
                ));
            }
        }
    }
    // One path is resolved per call: the program walks it outside the
    // loop over arguments.
    if entry.reads.iter().filter(|r| **r == arg_read::FD).count() > 1 {
        let name = super::syscalls::function_name(nr).unwrap_or_default();
        return Err(format!(
            "{name}: at most one argument of a syscall can be of type fd across the loaded hooks"
        ));
    }
    Ok(())
}

/// The table of syscall numbers before any selector.
pub fn empty_nrs() -> Vec<SysNr> {
    vec![SysNr::default(); SYSCALL_NRS]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::{load_file, Loaded};

    fn compile(yamls: &[String]) -> Result<Compiled, crate::policy::PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Loaded::default();
        for (i, y) in yamls.iter().enumerate() {
            let f = dir.path().join(format!("{i}.yaml"));
            std::fs::write(&f, y).unwrap();
            load_file(&f, &Default::default(), &mut l).unwrap();
        }
        Compiled::new(&l.policies)
    }

    #[test]
    fn host_ns_is_the_kernels_initial_namespace() {
        // The initial PID namespace is 0xEFFFFFFC on every kernel.
        assert_eq!(host_namespace(ns_kind::PID), Ok(4026531836));
        assert_eq!(host_namespace(ns_kind::PID_FOR_CHILDREN), Ok(4026531836));
        assert_eq!(host_namespace(ns_kind::USER), Ok(0xEFFF_FFFD));
        assert_eq!(namespace_inode(ns_kind::NET, NsValue::Inode(7)), Ok(7));
        let yaml = format!(
            "{}    selectors:\n    - matchNamespaces: [{{namespace: Uts, operator: In, values: [host_ns, \"12\"]}}]\n",
            write("ns", "{index: 0, type: int}")
        );
        let c = compile(&[yaml]).unwrap();
        let f = c.sys_selectors[0].ns[0];
        assert_eq!((f.kind as usize, f.negate, f.n), (ns_kind::UTS, 0, 2));
        assert_eq!(f.values[..2], [0xEFFF_FFFE, 12]);
        let nr = 1; // write
        assert_eq!(c.sys_nrs[nr].needs, sys_needs::NAMESPACES);
    }

    fn write(name: &str, arg1: &str) -> String {
        format!("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: {name}}}\nspec:\n  kprobes:\n  - call: sys_write\n    syscall: true\n    args: [{arg1}]\n")
    }

    #[test]
    fn a_longer_prefix_carries_the_selectors_of_the_shorter() {
        let mut set = BTreeMap::new();
        set.insert(arg_key(0, b"/a"), 1);
        set.insert(arg_key(0, b"/a/b"), 2);
        set.insert(arg_key(0, b"/c"), 4);
        set.insert(arg_key(1, b"/a/b/c"), 8);
        let closed: BTreeMap<_, _> = SysStrings::closed(&set)
            .into_iter()
            .map(|(bits, k, m)| ((bits, k), m))
            .collect();
        assert_eq!(closed[&arg_key(0, b"/a")], 1);
        assert_eq!(closed[&arg_key(0, b"/a/b")], 3);
        assert_eq!(closed[&arg_key(0, b"/c")], 4);
        // Another argument's values are apart.
        assert_eq!(closed[&arg_key(1, b"/a/b/c")], 8);
    }

    #[test]
    fn one_syscall_argument_is_read_one_way() {
        let s = "{index: 1, type: string}";
        let b = "{index: 1, type: char_buf, sizeArgIndex: 3}";
        let c = compile(&[write("a", s), write("b", s)]).unwrap();
        assert_eq!(c.sys_nrs[1].reads, [0, arg_read::STRING, 0, 0, 0, 0]);
        assert_eq!(c.sys_nrs[1].selectors, 3);
        let c = compile(&[write("a", b)]).unwrap();
        assert_eq!(c.sys_nrs[1].reads[1], arg_read::BUFFER + 2);
        let e = compile(&[write("a", s), write("b", b)]).unwrap_err();
        assert_eq!(e.field, "spec.kprobes[0]");
        assert!(e.reason.contains("argument 1 of __x64_sys_write"), "{e}");
    }

    #[test]
    fn one_fd_per_syscall_across_hooks() {
        let fd0 = "{index: 0, type: fd}";
        let c = compile(&[write("a", fd0), write("b", fd0)]).unwrap();
        assert_eq!(c.sys_nrs[1].reads, [arg_read::FD, 0, 0, 0, 0, 0]);
        let e = compile(&[write("a", fd0), write("b", "{index: 1, type: fd}")]).unwrap_err();
        assert!(e.reason.contains("at most one argument"), "{e}");
    }
}
