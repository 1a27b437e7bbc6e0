//! Tetragon's `process_credentials` (`--enable-process-cred`): the ids,
//! securebits and capability sets of a process, from the exec record (the
//! kernel's `struct cred` of the new image) or, for processes older than
//! the daemon, from `/proc/PID/status` (and their user namespace from
//! `/proc/PID/ns`, read with the others).
use sensor_common::{Creds, UserNs};
use serde::{Deserialize, Serialize};

/// Capability names by number (`CapabilitiesType`).
const CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Securebits names by bit (`SecureBitsType`).
const SECUREBITS: [&str; 8] = [
    "SecBitNoRoot",
    "SecBitNoRootLocked",
    "SecBitNoSetUidFixup",
    "SecBitNoSetUidFixupLocked",
    "SecBitKeepCaps",
    "SecBitKeepCapsLocked",
    "SecBitNoCapAmbientRaise",
    "SecBitNoCapAmbientRaiseLocked",
];

/// Tetragon's `ProcessCredentials`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessCredentials {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub securebits: Vec<String>,
    pub caps: Capabilities,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ns: Option<UserNamespace>,
}

/// Tetragon's `UserNamespace`. Level and owner are known from the kernel
/// only (not for processes found in /proc).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UserNamespace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    pub ns: super::ns::Namespace,
}

impl UserNamespace {
    fn from_kernel(u: &UserNs) -> Option<UserNamespace> {
        (u.inum != 0).then(|| UserNamespace {
            level: Some(u.level as i32),
            uid: Some(u.owner),
            gid: Some(u.group),
            ns: super::ns::Namespace::of_user(u.inum),
        })
    }

    /// A user namespace known by its inode only (a process found in
    /// /proc).
    pub fn of(ns: super::ns::Namespace) -> UserNamespace {
        UserNamespace {
            ns,
            ..Default::default()
        }
    }
}

/// Tetragon's `Capabilities`: the names of the set bits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permitted: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inheritable: Vec<String>,
}

fn names(bits: u64, table: &[&str]) -> Vec<String> {
    table
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

impl ProcessCredentials {
    /// From the ids in `struct cred`'s order (uid, gid, suid, sgid, euid,
    /// egid, fsuid, fsgid), the securebits and the permitted, effective
    /// and inheritable sets.
    fn build(
        ids: [u32; 8],
        securebits: u64,
        [permitted, effective, inheritable]: [u64; 3],
    ) -> Self {
        let [uid, gid, suid, sgid, euid, egid, fsuid, fsgid] = ids;
        ProcessCredentials {
            uid,
            gid,
            euid,
            egid,
            suid,
            sgid,
            fsuid,
            fsgid,
            securebits: names(securebits, &SECUREBITS),
            caps: Capabilities {
                permitted: names(permitted, &CAPS),
                effective: names(effective, &CAPS),
                inheritable: names(inheritable, &CAPS),
            },
            user_ns: None,
        }
    }

    /// From an exec record's credentials; `None` when the kernel did not
    /// read them.
    pub fn from_kernel(c: &Creds) -> Option<ProcessCredentials> {
        (c.valid != 0).then(|| {
            let caps = [c.cap_permitted, c.cap_effective, c.cap_inheritable];
            ProcessCredentials {
                user_ns: UserNamespace::from_kernel(&c.user_ns),
                ..Self::build(c.ids, c.securebits as u64, caps)
            }
        })
    }

    /// From `/proc/PID/status` (`Uid:` and `Gid:` list real, effective,
    /// saved and filesystem ids; `Cap*:` are hex). Securebits are not
    /// there, and read as none.
    pub fn from_status(status: &str) -> Option<ProcessCredentials> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let ids = |name: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            v.try_into().ok()
        };
        let caps = |name: &str| {
            field(name)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0)
        };
        let [uid, euid, suid, fsuid] = ids("Uid:")?;
        let [gid, egid, sgid, fsgid] = ids("Gid:")?;
        let sets = [caps("CapPrm:"), caps("CapEff:"), caps("CapInh:")];
        Some(Self::build(
            [uid, gid, suid, sgid, euid, egid, fsuid, fsgid],
            0,
            sets,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_proc_credentials_read_alike() {
        let c = Creds {
            ids: [1000, 100, 1001, 101, 0, 102, 0, 103],
            securebits: 0b101,
            valid: 1,
            cap_permitted: (1 << 21) | (1 << 39),
            cap_effective: 1 << 21,
            cap_inheritable: 0,
            user_ns: UserNs {
                level: 1,
                owner: 1000,
                group: 100,
                inum: 4026532000,
            },
        };
        let k = ProcessCredentials::from_kernel(&c).unwrap();
        assert_eq!((k.uid, k.euid, k.suid, k.fsuid), (1000, 0, 1001, 0));
        assert_eq!((k.gid, k.egid, k.sgid, k.fsgid), (100, 102, 101, 103));
        assert_eq!(k.securebits, ["SecBitNoRoot", "SecBitNoSetUidFixup"]);
        assert_eq!(k.caps.permitted, ["CAP_SYS_ADMIN", "CAP_BPF"]);
        assert_eq!(k.caps.effective, ["CAP_SYS_ADMIN"]);
        let u = k.user_ns.as_ref().unwrap();
        assert_eq!(
            (u.level, u.uid, u.gid, u.ns.inum),
            (Some(1), Some(1000), Some(100), 4026532000)
        );
        assert!(ProcessCredentials::from_kernel(&Creds::default()).is_none());

        let status = "Name:\tx\nUid:\t1000\t0\t1001\t0\nGid:\t100\t102\t101\t103\nCapInh:\t0000000000000000\nCapPrm:\t0000008000200000\nCapEff:\t0000000000200000\n";
        let p = ProcessCredentials::from_status(status).unwrap();
        assert_eq!(p.caps, k.caps);
        assert_eq!((p.uid, p.euid, p.egid), (1000, 0, 102));
    }
}
