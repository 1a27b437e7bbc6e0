//! Tetragon's `ns` (`--enable-process-ns`): the inode numbers of a
//! process's namespaces, from the exec record (read from the task in the
//! kernel) or, for processes older than the daemon, from `/proc/PID/ns`;
//! and whether each is the host's, that is PID 1's as this daemon's /proc
//! shows it (the DaemonSet shares the host's PID namespace).
use std::path::Path;
use std::sync::OnceLock;

use sensor_common::NS_KINDS;
use serde::{Deserialize, Serialize};

/// The `/proc/PID/ns` names, in `sensor_common::ns_kind` order (which is
/// Tetragon's field order).
const NAMES: [&str; NS_KINDS] = [
    "uts",
    "ipc",
    "mnt",
    "pid",
    "pid_for_children",
    "net",
    "time",
    "time_for_children",
    "cgroup",
    "user",
];

/// Tetragon's `Namespace`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Namespace {
    pub inum: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_host: bool,
}

/// Tetragon's `Namespaces`; a namespace this kernel lacks is left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Namespaces {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_for_children: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_for_children: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Namespace>,
}

impl Namespaces {
    /// From inode numbers in `ns_kind` order (0: unknown); `None` when
    /// none is known (the record was made without the flag).
    pub fn from_inums(inums: &[u32; NS_KINDS]) -> Option<Namespaces> {
        Namespaces::with_host(inums, host())
    }

    fn with_host(inums: &[u32; NS_KINDS], host: &[u32; NS_KINDS]) -> Option<Namespaces> {
        if inums.iter().all(|&i| i == 0) {
            return None;
        }
        let mut out = Namespaces::default();
        for (i, slot) in out.slots().into_iter().enumerate() {
            *slot = (inums[i] != 0).then(|| Namespace {
                inum: inums[i],
                is_host: inums[i] == host[i],
            });
        }
        Some(out)
    }

    /// A process's namespaces from its `/proc/PID` directory.
    pub fn from_proc(dir: &Path) -> Option<Namespaces> {
        Namespaces::from_inums(&read_inums(dir))
    }

    fn slots(&mut self) -> [&mut Option<Namespace>; NS_KINDS] {
        [
            &mut self.uts,
            &mut self.ipc,
            &mut self.mnt,
            &mut self.pid,
            &mut self.pid_for_children,
            &mut self.net,
            &mut self.time,
            &mut self.time_for_children,
            &mut self.cgroup,
            &mut self.user,
        ]
    }
}

impl Namespace {
    /// User namespace `inum`, marked if it is the host's.
    pub fn of_user(inum: u32) -> Namespace {
        Namespace {
            inum,
            is_host: host()[sensor_common::ns_kind::USER] == inum,
        }
    }
}

/// The host's namespaces: PID 1's, read once.
fn host() -> &'static [u32; NS_KINDS] {
    static HOST: OnceLock<[u32; NS_KINDS]> = OnceLock::new();
    HOST.get_or_init(|| read_inums(Path::new("/proc/1")))
}

/// The inode numbers of `dir/ns/*` (`uts:[4026531838]`); 0 where a link
/// cannot be read.
fn read_inums(dir: &Path) -> [u32; NS_KINDS] {
    NAMES.map(|name| {
        std::fs::read_link(dir.join("ns").join(name))
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                let inum = l.split_once('[')?.1.strip_suffix(']')?;
                inum.parse().ok()
            })
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_become_namespaces_marked_host_or_not() {
        let host = [10, 11, 12, 13, 13, 15, 16, 16, 18, 19];
        let mut mine = host;
        mine[0] = 99; // its own uts
        mine[6] = 0; // no time namespaces here
        let ns = Namespaces::with_host(&mine, &host).unwrap();
        assert_eq!(
            ns.uts,
            Some(Namespace {
                inum: 99,
                is_host: false
            })
        );
        assert_eq!(
            ns.net,
            Some(Namespace {
                inum: 15,
                is_host: true
            })
        );
        assert_eq!(ns.time, None);
        assert!(Namespaces::with_host(&[0; NS_KINDS], &host).is_none());
    }

    #[test]
    fn this_process_namespaces_read_from_proc() {
        let inums = read_inums(Path::new("/proc/self"));
        assert!(inums[0] > 0 && inums[5] > 0, "{inums:?}");
    }
}
