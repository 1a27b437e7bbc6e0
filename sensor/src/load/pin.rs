//! The pinned set: the kernel state that outlives the daemon. Under
//! `--bpf-dir`, one directory per build (`<bpf-dir>/<build id>/`) holds a
//! pin of every map (`maps/<NAME>`) and of every program's link
//! (`links/<program>`); a program that cannot have a link on this kernel is
//! pinned itself (`programs/<program>`). The kernel keeps a pinned link attached and a pinned
//! map alive until its pin is removed, whatever happens to the process that
//! made it. `complete/` is made last, so a set whose daemon died while
//! pinning is never adopted, only removed.
use std::path::{Path, PathBuf};

use super::probe::{Form, Plan};

/// `statfs` magic of the bpf file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not on a bpf file system (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What distinguishes one build's kernel side from another's: the embedded
/// object and the program forms chosen for this kernel. Two daemons with the
/// same id can share a set; any other pair must swap sets.
/// `SENSOR_BUILD_ID` overrides it, so that tests can stage an upgrade.
pub fn build_id(object: &[u8], plan: &Plan) -> String {
    match std::env::var("SENSOR_BUILD_ID") {
        Ok(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            id
        }
        _ => object_id(object, plan),
    }
}

fn object_id(object: &[u8], plan: &Plan) -> String {
    let form = |f: Form| match f {
        Form::Modern => b'm',
        Form::Deferred => b'd',
        Form::Compat => b'c',
    };
    let forms = [
        form(plan.exec),
        form(plan.connect),
        plan.lsm as u8,
        plan.ima_missing.is_none() as u8,
    ];
    // FNV-1a: stable across toolchains, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object.iter().chain(forms.iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{h:016x}", env!("CARGO_PKG_VERSION").replace('.', "-"))
}

/// One build's pinned set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDir {
    pub path: PathBuf,
}

impl SetDir {
    pub fn id(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    pub fn maps(&self) -> PathBuf {
        self.path.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.path.join("links")
    }
    /// Programs pinned without a link: the syscall policies' program,
    /// attached only while a syscall policy is loaded (so that an adopting
    /// daemon can attach it). Older builds pinned the packet-socket guard
    /// there before Linux 5.15; a set they left is removed whole.
    pub fn programs(&self) -> PathBuf {
        self.path.join("programs")
    }
    pub fn is_complete(&self) -> bool {
        self.path.join("complete").is_dir()
    }

    /// Makes an empty set directory for `id`, removing what a daemon that
    /// died half-way through pinning it left there.
    pub fn create(bpf_dir: &Path, id: &str) -> Result<SetDir, PinError> {
        let set = SetDir {
            path: bpf_dir.join(id),
        };
        if set.path.exists() {
            set.remove()?;
        }
        for d in [set.maps(), set.links(), set.programs()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(set)
    }

    /// Declares the set whole: every map and link is pinned.
    pub fn mark_complete(&self) -> Result<(), PinError> {
        let c = self.path.join("complete");
        std::fs::create_dir(&c).map_err(io(&c))
    }

    /// Unpins everything in the set. Links whose last reference was the pin
    /// detach now; those a live process still holds detach when it lets go.
    /// Links go first, so no program runs on maps that are going away.
    pub fn remove(&self) -> Result<(), PinError> {
        let complete = self.path.join("complete");
        if complete.is_dir() {
            std::fs::remove_dir(&complete).map_err(io(&complete))?;
        }
        for d in [self.links(), self.programs(), self.maps()] {
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    let p = e.path();
                    std::fs::remove_file(&p).map_err(io(&p))?;
                }
                std::fs::remove_dir(&d).map_err(io(&d))?;
            }
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.path)(e)),
        }
    }

    /// The pinned programs' links, by program name.
    pub fn link_pins(&self) -> Vec<(String, PathBuf)> {
        pins(&self.links())
    }

    /// The pinned maps, by map name.
    pub fn map_pins(&self) -> Vec<(String, PathBuf)> {
        pins(&self.maps())
    }
}

fn pins(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

/// Creates `bpf_dir` if needed and checks that pins can live there.
pub fn prepare(bpf_dir: &Path) -> Result<(), PinError> {
    std::fs::create_dir_all(bpf_dir).map_err(io(bpf_dir))?;
    let c = std::ffi::CString::new(bpf_dir.as_os_str().as_encoded_bytes())
        .map_err(|e| io(bpf_dir)(std::io::Error::other(e)))?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io(bpf_dir)(std::io::Error::last_os_error()));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(PinError::NotBpffs(bpf_dir.display().to_string()));
    }
    Ok(())
}

/// The sets under `bpf_dir`, in name order.
pub fn sets(bpf_dir: &Path) -> Vec<SetDir> {
    let mut v: Vec<SetDir> = std::fs::read_dir(bpf_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| SetDir { path: e.path() })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_differ_by_object_and_by_form() {
        let plan = |exec| Plan {
            exec,
            connect: Form::Modern,
            lsm: false,
            connect_errno_missing: None,
            lsm_missing: None,
            ima_missing: None,
        };
        let a = object_id(b"object one", &plan(Form::Modern));
        assert_eq!(a, object_id(b"object one", &plan(Form::Modern)));
        assert_ne!(a, object_id(b"object two", &plan(Form::Modern)));
        assert_ne!(a, object_id(b"object one", &plan(Form::Compat)));
        assert!(a.starts_with(&env!("CARGO_PKG_VERSION").replace('.', "-")));
    }
}
