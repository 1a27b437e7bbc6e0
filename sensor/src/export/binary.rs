//! Tetragon's `binary_properties`: a set-user-ID or set-group-ID
//! execution, the privileges an exec raised, and the inode of a binary
//! that no file system names (memfd, deleted). As in Tetragon, an exec is
//! privileged only when the kernel cleared personality flags for it
//! (`bprm->per_clear`: set-ID, or capabilities gained). Tetragon then
//! compares the credentials before and after the exec; the exec record
//! carries the ones after and the file's mode and owner, which say the
//! same: a set-user-ID exec leaves the effective uid at the file's owner
//! and the real uid where it was, and capabilities a privileged exec
//! gave without one came from the file.
use sensor_common::BinaryInfo;
use serde::{Deserialize, Serialize};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// Tetragon's `BinaryProperties`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BinaryProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setuid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setgid: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileges_changed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileProperties>,
}

/// `FileProperties`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileProperties {
    pub inode: InodeProperties,
    pub path: String,
}

/// `InodeProperties`; protojson writes the 64-bit number as a string.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InodeProperties {
    pub number: String,
    pub links: u32,
}

impl BinaryProperties {
    /// From an exec of `path` by real `uid` and `gid`; `None` when there
    /// is nothing to say (as in Tetragon, which leaves the field out).
    pub fn of(b: &BinaryInfo, uid: u32, gid: u32, path: &str) -> Option<BinaryProperties> {
        if b.valid == 0 {
            return None;
        }
        let privileged = b.per_clear != 0;
        let setuid = (privileged && b.mode & S_ISUID != 0 && b.euid != uid && b.euid == b.file_uid)
            .then_some(b.euid);
        // A set-group-ID file without group execute is mandatory locking,
        // not set-group-ID.
        let setgid = (privileged
            && b.mode & S_ISGID != 0
            && b.mode & S_IXGRP != 0
            && b.egid != gid
            && b.egid == b.file_gid)
            .then_some(b.egid);
        let mut privileges_changed = Vec::new();
        // Capabilities a privileged exec gave that no set-user-ID root
        // file nor ambient set explains came from the file's sets.
        if privileged && setuid.is_none() && b.cap_permitted != 0 && b.cap_ambient == 0 {
            privileges_changed.push("PRIVILEGES_RAISED_EXEC_FILE_CAP".to_string());
        }
        if setuid == Some(0) && uid != 0 {
            privileges_changed.push("PRIVILEGES_RAISED_EXEC_FILE_SETUID".to_string());
        }
        if setgid == Some(0) && gid != 0 {
            privileges_changed.push("PRIVILEGES_RAISED_EXEC_FILE_SETGID".to_string());
        }
        let file = (b.nlink == 0 && b.ino != 0).then(|| FileProperties {
            inode: InodeProperties {
                number: b.ino.to_string(),
                links: 0,
            },
            path: path.to_string(),
        });
        let p = BinaryProperties {
            setuid,
            setgid,
            privileges_changed,
            file,
        };
        (p != BinaryProperties::default()).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mode: u32, owner: u32, euid: u32) -> BinaryInfo {
        BinaryInfo {
            ino: 42,
            nlink: 1,
            mode,
            file_uid: owner,
            euid,
            valid: 1,
            per_clear: (mode & S_ISUID != 0) as u32,
            ..Default::default()
        }
    }

    #[test]
    fn a_set_user_id_root_exec_raises_privileges() {
        let p = BinaryProperties::of(&info(0o104755, 0, 0), 1000, 1000, "/usr/bin/su").unwrap();
        assert_eq!(p.setuid, Some(0));
        assert_eq!(p.privileges_changed, ["PRIVILEGES_RAISED_EXEC_FILE_SETUID"]);
        // Root running it changes nothing.
        assert!(BinaryProperties::of(&info(0o104755, 0, 0), 0, 0, "/usr/bin/su").is_none());
        // A set-user-ID file of another owner: setuid, no raise to root.
        let p = BinaryProperties::of(&info(0o104755, 33, 33), 1000, 1000, "/x").unwrap();
        assert_eq!((p.setuid, p.privileges_changed.len()), (Some(33), 0));
        // A plain file: nothing.
        assert!(BinaryProperties::of(&info(0o100755, 0, 1000), 1000, 1000, "/x").is_none());
    }

    #[test]
    fn file_capabilities_and_unnamed_files_are_reported() {
        let mut b = info(0o100755, 0, 1000);
        b.cap_permitted = 1 << 13;
        // Not privileged in the kernel's eyes (a user namespace's root
        // keeping what it had): nothing raised.
        assert!(BinaryProperties::of(&b, 1000, 1000, "/x").is_none());
        b.per_clear = 1;
        let p = BinaryProperties::of(&b, 1000, 1000, "/x").unwrap();
        assert_eq!(p.privileges_changed, ["PRIVILEGES_RAISED_EXEC_FILE_CAP"]);
        b.cap_ambient = 1 << 13;
        assert!(BinaryProperties::of(&b, 1000, 1000, "/x").is_none());
        let mut m = info(0o100755, 0, 0);
        m.nlink = 0;
        let p = BinaryProperties::of(&m, 0, 0, "/memfd:x").unwrap();
        let f = p.file.unwrap();
        assert_eq!(
            (f.inode.number.as_str(), f.inode.links, f.path.as_str()),
            ("42", 0, "/memfd:x")
        );
    }
}
