//! The file where quarantine decisions wait for their label, so that a
//! restart forgets none of them. It is written whole, synced and renamed
//! into place (a crash leaves the old list or the new one), readable by
//! root only (it names pods and the exec ids that condemned them), and a
//! file that does not parse is kept aside and reported, never overwritten.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::Decision;

/// What loading found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub decisions: Vec<Decision>,
    /// Set when the file was there but could not be used.
    pub corrupt: Option<Corrupt>,
}

/// A state file that could not be read or parsed.
#[derive(Debug)]
pub struct Corrupt {
    /// Where the unusable file now is (`None` when it could not be moved,
    /// or could not be read in the first place).
    pub kept: Option<PathBuf>,
    pub error: String,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kept {
            Some(k) => write!(f, "{} (kept as {})", self.error, k.display()),
            None => f.write_str(&self.error),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        StateFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decisions kept before a restart. A file that does not parse is
    /// renamed to `NAME.corrupt-UNIXTIME` so that the next save cannot
    /// destroy what an operator may still recover from it.
    pub fn load(&self) -> Loaded {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::default(),
            Err(e) => {
                return Loaded {
                    decisions: Vec::new(),
                    corrupt: Some(Corrupt {
                        kept: None,
                        error: format!("reading {}: {e}", self.path.display()),
                    }),
                }
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(decisions) => Loaded {
                decisions,
                corrupt: None,
            },
            Err(e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = self.path.with_extension(format!("json.corrupt-{secs}"));
                let kept = std::fs::rename(&self.path, &aside).ok().map(|()| aside);
                Loaded {
                    decisions: Vec::new(),
                    corrupt: Some(Corrupt {
                        kept,
                        error: format!("parsing {}: {e}", self.path.display()),
                    }),
                }
            }
        }
    }

    /// Writes the list: a temporary file (mode 0600) synced to disk, renamed
    /// over the old one, and the directory synced so that the rename itself
    /// survives a power cut.
    pub fn save(&self, decisions: &[Decision]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(decisions).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // A temporary file left by an older build may have kept a wider
            // mode: `mode` applies to new files only.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn decision(uid: &str) -> Decision {
        Decision::for_test(uid)
    }

    #[test]
    fn saves_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateFile::new(dir.path().join("pending.json"));
        assert!(s.load().decisions.is_empty());
        s.save(&[decision("a"), decision("b")]).unwrap();
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let l = s.load();
        assert!(l.corrupt.is_none());
        assert_eq!(l.decisions, vec![decision("a"), decision("b")]);
        assert!(!dir.path().join("pending.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_kept_aside_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateFile::new(dir.path().join("pending.json"));
        std::fs::write(s.path(), b"[{\"namespace\": \"shop\", trunc").unwrap();
        let l = s.load();
        let c = l.corrupt.expect("reported");
        let kept = c.kept.expect("moved aside");
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"[{\"namespace\": \"shop\", trunc"
        );
        assert!(c.error.contains("pending.json"), "{}", c.error);
        assert!(l.decisions.is_empty());
        // The next save does not touch what was kept.
        s.save(&[decision("a")]).unwrap();
        assert!(kept.exists());
    }
}
