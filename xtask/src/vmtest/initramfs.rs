//! The guest's root file system: an initramfs (cpio `newc`) that holds the
//! host's own files at their own paths (the test binaries, the sensor, the
//! programs the tests start and their shared libraries), so the guest runs
//! exactly the code the host runs.
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// A cpio archive being written; paths are added once each.
pub struct Cpio<W: Write> {
    out: W,
    seen: BTreeSet<PathBuf>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            seen: BTreeSet::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, path: &Path, mode: u32, data: &[u8]) -> Result<()> {
        let name = path.to_string_lossy();
        let name = name.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        self.ino += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        pad(&mut self.out, 110 + name.len() + 1)?;
        self.out.write_all(data)?;
        pad(&mut self.out, data.len())?;
        Ok(())
    }

    /// The directories above `path`, as the host has them (a symlinked
    /// parent such as `/lib -> usr/lib` stays a symlink), or plain
    /// directories where the host has none.
    fn parents(&mut self, path: &Path) -> Result<()> {
        let mut at = PathBuf::from("/");
        let comps: Vec<_> = path.components().collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if let Component::Normal(n) = c {
                at.push(n);
                if std::fs::symlink_metadata(&at).is_ok() {
                    self.add(&at.clone(), false)?;
                } else if self.seen.insert(at.clone()) {
                    self.entry(&at, S_IFDIR | 0o755, &[])?;
                }
            }
        }
        Ok(())
    }

    /// Adds a directory of the guest's own (not from the host).
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let p = PathBuf::from(path);
        self.parents(&p)?;
        if self.seen.insert(p.clone()) {
            self.entry(&p, S_IFDIR | 0o755, &[])?;
        }
        Ok(())
    }

    /// Adds a file of the guest's own with `content`.
    pub fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> Result<()> {
        let p = PathBuf::from(path);
        self.parents(&p)?;
        if self.seen.insert(p.clone()) {
            self.entry(&p, S_IFREG | mode, content)?;
        }
        Ok(())
    }

    /// Adds the host's file `from` at `path`.
    pub fn file_from(&mut self, path: &Path, from: &Path) -> Result<()> {
        let data = std::fs::read(from).with_context(|| from.display().to_string())?;
        let mode = std::fs::metadata(from)?.permissions().mode() & 0o7777;
        self.parents(path)?;
        if self.seen.insert(path.to_path_buf()) {
            self.entry(path, S_IFREG | mode, &data)?;
        }
        Ok(())
    }

    /// Adds a symlink of the guest's own.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let p = PathBuf::from(path);
        self.parents(&p)?;
        if self.seen.insert(p.clone()) {
            self.entry(&p, S_IFLNK | 0o777, target.as_bytes())?;
        }
        Ok(())
    }

    /// Adds the host's `path` at the same place: a file, a symlink (and
    /// what it points to), or a directory with everything under it.
    pub fn add_host(&mut self, path: &Path) -> Result<()> {
        self.add(path, true)
    }

    fn add(&mut self, path: &Path, recursive: bool) -> Result<()> {
        let meta =
            std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
        let ft = meta.file_type();
        let new = !self.seen.contains(path);
        // A directory seen as a parent before is walked when asked to be.
        if !(new || ft.is_dir() && recursive) {
            return Ok(());
        }
        self.parents(path)?;
        self.seen.insert(path.to_path_buf());
        if ft.is_symlink() {
            let target = std::fs::read_link(path)?;
            self.entry(path, S_IFLNK | 0o777, target.as_os_str().as_encoded_bytes())?;
            let resolved = path.parent().unwrap_or(Path::new("/")).join(&target);
            return self.add(&normalize(&resolved), recursive);
        }
        if ft.is_dir() {
            if new {
                self.entry(path, S_IFDIR | (meta.mode() & 0o7777), &[])?;
            }
            if recursive {
                let mut children: Vec<_> = std::fs::read_dir(path)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                children.sort();
                for c in children {
                    self.add(&c, true)?;
                }
            }
            return Ok(());
        }
        if ft.is_file() {
            let data = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            self.entry(path, S_IFREG | mode, &data)?;
        }
        Ok(())
    }

    /// Adds a host program and every shared library `ldd` says it needs.
    pub fn add_program(&mut self, path: &Path) -> Result<()> {
        self.add_host(path)?;
        self.add_libraries(path)
    }

    /// The shared libraries `program` loads, at their host paths.
    pub fn add_libraries(&mut self, program: &Path) -> Result<()> {
        for lib in shared_libraries(program)? {
            self.add_host(&lib)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        self.entry(Path::new("TRAILER!!!"), 0, &[])?;
        Ok(self.out)
    }
}

fn pad(out: &mut impl Write, len: usize) -> std::io::Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..n])
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The shared libraries (and the dynamic loader) a program needs.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    // A static program makes ldd fail with "not a dynamic executable".
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_padded_and_closed_by_a_trailer() {
        let mut c = Cpio::new(Vec::new());
        c.file("/a/b", 0o644, b"xyz").unwrap();
        let out = c.finish().unwrap();
        let text = String::from_utf8_lossy(&out);
        // the parent directory, the file, the trailer
        assert_eq!(text.matches("070701").count(), 3);
        assert!(text.contains("a/b\0"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn normalize_resolves_parent_components() {
        assert_eq!(
            normalize(Path::new("/usr/bin/../lib/x")),
            Path::new("/usr/lib/x")
        );
    }
}
