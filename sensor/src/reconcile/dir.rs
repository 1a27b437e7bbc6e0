//! The policy directory (`--policy-dir`), watched with inotify: a file
//! added, changed or removed takes effect without a restart. Each file is
//! taken or refused on its own: a bad file is logged and the others keep
//! working, and a file that turns bad keeps its last good version in force.
//! Kubernetes updates a mounted ConfigMap by renaming a directory inside
//! this one, which the watch sees too.
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use super::{Active, PolicySet, Source};
use crate::documents::{self, Loaded, Vars};
use crate::policy::PolicyError;

pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    pub dir: PathBuf,
    /// The text of each file as last read, to tell changes from touches.
    seen: BTreeMap<PathBuf, String>,
}

impl DirWatch {
    pub fn new(dir: &Path) -> std::io::Result<DirWatch> {
        // SAFETY: plain syscalls; the fd is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        let mask = libc::IN_CREATE
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_ATTRIB;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DirWatch {
            // SAFETY: the AsyncFd owns the inotify fd for as long as it is
            // registered.
            fd: unsafe { AsyncFd::register(fd) }?,
            dir: dir.to_path_buf(),
            seen: BTreeMap::new(),
        })
    }

    /// Waits until something in the directory changed, and takes the
    /// notifications (their content does not matter: the directory is read
    /// again whole).
    pub async fn changed(&mut self) -> std::io::Result<()> {
        let mut guard = self.fd.readable().await?;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into our buffer.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
        }
        guard.clear_ready();
        Ok(())
    }

    /// Brings `set` in line with the directory's files. Returns what is in
    /// force afterwards when anything changed.
    pub fn sync(&mut self, set: &mut PolicySet, vars: &Vars) -> Option<Active> {
        let files = yaml_files(&self.dir);
        let mut changed = None;
        for f in &files {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            if self.seen.get(f) == Some(&text) {
                continue;
            }
            self.seen.insert(f.clone(), text.clone());
            let taken = load(f, &text, vars).and_then(|l| set.set(Source::Dir(f.clone()), Some(l)));
            match taken {
                Ok(a) => {
                    tracing::info!(file = %f.display(), "policy file taken");
                    changed = Some(a);
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy file refused; the others (and its last good version) stay in force");
                    set.refused(Source::Dir(f.clone()));
                }
            }
        }
        for gone in set.dir_files().into_iter().filter(|f| !files.contains(f)) {
            self.seen.remove(&gone);
            match set.set(Source::Dir(gone.clone()), None) {
                Ok(a) => {
                    tracing::info!(file = %gone.display(), "policy file removed");
                    changed = Some(a);
                }
                Err(e) => tracing::error!(error = %e, "removing a policy file"),
            }
        }
        self.seen.retain(|f, _| files.contains(f));
        set.forget_refused(|s| matches!(s, Source::Dir(f) if !files.contains(f)));
        changed
    }
}

fn load(file: &Path, text: &str, vars: &Vars) -> Result<Loaded, PolicyError> {
    let mut l = Loaded::default();
    documents::load_text(file, text, vars, &mut l)?;
    for (file, why) in &l.skipped {
        tracing::warn!(file = %file.display(), why, "document not loaded");
    }
    Ok(l)
}

/// The `*.yaml` and `*.yml` files of `dir`, in name order.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}
