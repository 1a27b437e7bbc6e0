//! A minimal reader of the kernel's BTF, enough to find struct member offsets
//! (through anonymous unions and structs), which the kernel programs need
//! because Rust eBPF has no CO-RE.
use std::collections::HashMap;

use sensor_common::KernelOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("BTF struct `{0}` has no member `{1}`")]
    NoMember(String, String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    members: Vec<Member>,
}

/// Parsed types (id - 1 indexes `types`) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

/// `struct nsproxy`'s namespace pointers and the struct each points to,
/// in the order of `KernelOffsets::nsproxy_ns` (a kernel without time
/// namespaces has 0 for those).
const NSPROXY: [(&str, &str); 8] = [
    ("uts_ns", "uts_namespace"),
    ("ipc_ns", "ipc_namespace"),
    ("mnt_ns", "mnt_namespace"),
    ("pid_ns_for_children", "pid_namespace"),
    ("net_ns", "net"),
    ("time_ns", "time_namespace"),
    ("time_ns_for_children", "time_namespace"),
    ("cgroup_ns", "cgroup_namespace"),
];

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is read)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let tstart = hdr_len + type_off;
        let tsec = data
            .get(tstart..tstart + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let sstart = hdr_len + str_off;
        let strings = data
            .get(sstart..sstart + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = Vec::new();
        let mut at = 0;
        while at < tsec.len() {
            let name = u32_at(tsec, at)?;
            let info = u32_at(tsec, at + 4)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(tsec, m + 8)?;
                        members.push(Member {
                            name: u32_at(tsec, m)?,
                            ty: u32_at(tsec, m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    at += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => at += vlen * 12,
                _ => {}
            }
            types.push(Type {
                name,
                kind,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (i, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.str_at(t.name).to_string();
                // The first definition wins; duplicates come from modules.
                btf.structs.entry(name).or_insert(i as u32 + 1);
            }
        }
        Ok(btf)
    }

    /// The type id of the kernel function `name` (a `FUNC` type).
    pub fn function_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_FUNC && self.str_at(t.name) == name)
            .map(|i| i as u32 + 1)
    }

    fn str_at(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Byte offset of `member` in struct `name`, looking through anonymous
    /// unions and structs.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        self.find(id, member, 0, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.into(), member.into()))
    }

    fn find(&self, id: u32, member: &str, base: u32, depth: u32) -> Option<u32> {
        let t = self.ty(id)?;
        if depth > 8 || !(t.kind == KIND_STRUCT || t.kind == KIND_UNION) {
            return None;
        }
        for m in &t.members {
            if m.name == 0 {
                if let Some(off) = self.find(m.ty, member, base + m.bit_offset, depth + 1) {
                    return Some(off);
                }
            } else if self.str_at(m.name) == member {
                return Some(base + m.bit_offset);
            }
        }
        None
    }

    /// Every offset the kernel programs read.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let o = |s: &str, m: &str| self.member_offset(s, m);
        // `struct sock` begins with its `sock_common`.
        let sk = |m: &str| Ok::<u32, BtfError>(o("sock", "__sk_common")? + o("sock_common", m)?);
        let mut k = KernelOffsets {
            task_pid: o("task_struct", "pid")?,
            task_tgid: o("task_struct", "tgid")?,
            task_real_parent: o("task_struct", "real_parent")?,
            task_mm: o("task_struct", "mm")?,
            task_fs: o("task_struct", "fs")?,
            task_signal: o("task_struct", "signal")?,
            task_exit_code: o("task_struct", "exit_code")?,
            mm_exe_file: o("mm_struct", "exe_file")?,
            mm_arg_start: o("mm_struct", "arg_start")?,
            mm_arg_end: o("mm_struct", "arg_end")?,
            file_f_path: o("file", "f_path")?,
            path_dentry: o("path", "dentry")?,
            path_mnt: o("path", "mnt")?,
            fs_pwd: o("fs_struct", "pwd")?,
            dentry_d_parent: o("dentry", "d_parent")?,
            dentry_d_name: o("dentry", "d_name")?,
            qstr_len: o("qstr", "len")?,
            qstr_name: o("qstr", "name")?,
            mount_mnt: o("mount", "mnt")?,
            mount_mnt_parent: o("mount", "mnt_parent")?,
            mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
            vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
            signal_live: o("signal_struct", "live")?,
            task_cgroups: o("task_struct", "cgroups")?,
            css_set_dfl_cgrp: o("css_set", "dfl_cgrp")?,
            cgroup_kn: o("cgroup", "kn")?,
            kernfs_node_id: o("kernfs_node", "id")?,
            cgroup_self: o("cgroup", "self")?,
            css_parent: o("cgroup_subsys_state", "parent")?,
            css_cgroup: o("cgroup_subsys_state", "cgroup")?,
            binprm_file: o("linux_binprm", "file")?,
            // Only with CONFIG_AUDITSYSCALL; events then say "unset".
            task_loginuid: o("task_struct", "loginuid").unwrap_or(0),
            task_cred: o("task_struct", "cred")?,
            cred_uid: self.cred_ids()?,
            cred_securebits: o("cred", "securebits")?,
            cred_cap_inheritable: o("cred", "cap_inheritable")?,
            cred_cap_permitted: o("cred", "cap_permitted")?,
            cred_cap_effective: o("cred", "cap_effective")?,
            task_group_leader: o("task_struct", "group_leader")?,
            task_thread_pid: o("task_struct", "thread_pid")?,
            pid_level: o("pid", "level")?,
            pid_numbers: o("pid", "numbers")?,
            upid_ns: o("upid", "ns")?,
            // `struct upid` ends with its namespace pointer.
            upid_size: o("upid", "ns")? + 8,
            task_nsproxy: o("task_struct", "nsproxy")?,
            nsproxy_ns: NSPROXY.map(|(member, _)| o("nsproxy", member).unwrap_or(0)),
            ns_common_at: NSPROXY.map(|(_, ty)| o(ty, "ns").unwrap_or(0)),
            ns_inum: o("ns_common", "inum")?,
            cred_user_ns: o("cred", "user_ns")?,
            user_ns_common: o("user_namespace", "ns")?,
            file_f_inode: o("file", "f_inode")?,
            inode_i_mode: o("inode", "i_mode")?,
            inode_i_uid: o("inode", "i_uid")?,
            inode_i_gid: o("inode", "i_gid")?,
            inode_i_nlink: o("inode", "__i_nlink")?,
            inode_i_ino: o("inode", "i_ino")?,
            cred_cap_ambient: o("cred", "cap_ambient")?,
            binprm_per_clear: o("linux_binprm", "per_clear")?,
            user_ns_level: o("user_namespace", "level")?,
            user_ns_owner: o("user_namespace", "owner")?,
            user_ns_group: o("user_namespace", "group")?,
            sk_family: sk("skc_family")?,
            sk_state: sk("skc_state")?,
            sk_num: sk("skc_num")?,
            sk_dport: sk("skc_dport")?,
            sk_rcv_saddr: sk("skc_rcv_saddr")?,
            sk_daddr: sk("skc_daddr")?,
            sk_v6_rcv_saddr: sk("skc_v6_rcv_saddr").unwrap_or(0),
            sk_v6_daddr: sk("skc_v6_daddr").unwrap_or(0),
            sk_protocol: o("sock", "sk_protocol")?,
            sk_type: o("sock", "sk_type")?,
            task_files: o("task_struct", "files")?,
            files_fdt: o("files_struct", "fdt")?,
            fdt_max_fds: o("fdtable", "max_fds")?,
            fdt_fd: o("fdtable", "fd")?,
            file_private_data: o("file", "private_data")?,
            socket_sk: o("socket", "sk")?,
            sk_packed: 0,
            sk_net: sk("skc_net")?,
            // Only with CONFIG_SOCK_CGROUP_DATA (cgroup v2 sockets).
            sk_cgrp_data: o("sock", "sk_cgrp_data").unwrap_or(0),
        };
        k.sk_packed = packed_sock(&k) as u32;
        Ok(k)
    }

    /// The offset of `struct cred`'s eight ids, read as one array: uid
    /// first, fsgid 28 bytes on, as every kernel lays them out; 0 if this
    /// one does not (credentials are then not reported).
    fn cred_ids(&self) -> Result<u32, BtfError> {
        let uid = self.member_offset("cred", "uid")?;
        let fsgid = self.member_offset("cred", "fsgid")?;
        Ok(if fsgid == uid + 28 { uid } else { 0 })
    }
}

/// Whether the kernel programs may read `sock_common`'s head in one copy
/// (see `KernelOffsets::sk_packed`).
fn packed_sock(k: &KernelOffsets) -> bool {
    let d = k.sk_daddr;
    k.sk_rcv_saddr == d + 4
        && k.sk_dport == d + 12
        && k.sk_num == d + 14
        && k.sk_family == d + 16
        && k.sk_state == d + 18
        && k.sk_protocol.abs_diff(k.sk_type) == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_offsets_are_found() {
        let btf = match Btf::from_sys_fs() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("SKIP: no kernel BTF here: {e}");
                return;
            }
        };
        let o = btf.kernel_offsets().expect("offsets");
        // qstr is { union { struct { u32 hash; u32 len; }; u64 hash_len; }; name }.
        assert_eq!(o.qstr_len, 4);
        assert_eq!(o.qstr_name, 8);
        assert!(o.task_tgid > o.task_pid.saturating_sub(8));
        assert!(o.task_pid > 0 && o.mm_arg_end == o.mm_arg_start + 8);
        assert_eq!(o.sk_packed, 1, "sock_common as every kernel lays it out");
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(b"nope"), Err(BtfError::Malformed(_))));
    }
}
