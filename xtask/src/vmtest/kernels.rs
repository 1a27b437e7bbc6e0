//! The kernels of the matrix: Debian's cloud kernels, fetched with apt from
//! Debian's archive through a private apt configuration (its own sources
//! file, lists and cache under `target/vmtest/apt`, so the host's apt setup
//! is never touched), unpacked and cached under `target/vmtest/kernels`.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::root;

/// One column of the matrix.
pub struct KernelSpec {
    /// Column heading.
    pub label: &'static str,
    /// Which suites' indexes hold it.
    pub suites: &'static [&'static str],
    /// The newest package whose name starts with this and ends with
    /// `-cloud-amd64` is taken.
    pub package_prefix: &'static str,
    /// Extra test for the package name (excludes the bullseye backport of
    /// 6.1, `6.1.0-0.deb11.N`, from the bookworm column).
    pub exclude: Option<&'static str>,
}

pub const MATRIX: [KernelSpec; 4] = [
    KernelSpec {
        label: "5.10",
        suites: &["bullseye", "bullseye-security"],
        package_prefix: "linux-image-5.10.0-",
        exclude: None,
    },
    KernelSpec {
        label: "6.1",
        suites: &["bookworm", "bookworm-security"],
        package_prefix: "linux-image-6.1.0-",
        exclude: Some("deb11"),
    },
    KernelSpec {
        label: "6.12",
        suites: &["bookworm-backports"],
        package_prefix: "linux-image-6.12.",
        exclude: None,
    },
    KernelSpec {
        label: "6.18",
        suites: &["trixie-backports"],
        package_prefix: "linux-image-6.18.",
        exclude: None,
    },
];

/// An unpacked kernel: the image and its module tree.
pub struct Kernel {
    pub label: &'static str,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

fn dir() -> PathBuf {
    root().join("target/vmtest")
}

/// apt with its own sources, lists and cache.
fn apt(tool: &str) -> Command {
    let base = dir().join("apt");
    let mut c = Command::new(tool);
    c.arg("-q")
        .arg(format!(
            "-oDir::Etc::SourceList={}",
            base.join("sources.list").display()
        ))
        .arg("-oDir::Etc::SourceParts=/nonexistent")
        .arg(format!(
            "-oDir::State::Lists={}",
            base.join("lists").display()
        ))
        .arg(format!("-oDir::Cache={}", base.join("cache").display()))
        .arg("-oAPT::Get::List-Cleanup=0")
        .arg("-oAcquire::Retries=3");
    c
}

fn update_indexes() -> Result<()> {
    let base = dir().join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(base.join(d))?;
    }
    let mut sources = String::new();
    for suite in MATRIX.iter().flat_map(|k| k.suites) {
        let archive = if suite.ends_with("-security") {
            "http://deb.debian.org/debian-security"
        } else {
            "http://deb.debian.org/debian"
        };
        sources.push_str(&format!("deb {archive} {suite} main\n"));
    }
    std::fs::write(base.join("sources.list"), sources)?;
    succeeded(
        apt("apt-get").arg("update"),
        "apt-get update for the kernel matrix",
    )
}

/// Runs an apt command; its error output is the failure's reason.
fn succeeded(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The newest package of `spec` that the indexes list.
fn newest_package(spec: &KernelSpec) -> Result<String> {
    let out = apt("apt-cache")
        .args(["search", "--names-only"])
        .arg(format!(
            "^{}.*-cloud-amd64$",
            regex_escape(spec.package_prefix)
        ))
        .output()
        .context("running apt-cache search")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| spec.exclude.is_none_or(|x| !n.contains(x)))
        .collect();
    names.sort_by(|a, b| version_cmp(a, b));
    names.last().map(|s| s.to_string()).with_context(|| {
        format!(
            "no package {}*-cloud-amd64 in {:?}",
            spec.package_prefix, spec.suites
        )
    })
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.").replace('+', "\\+")
}

/// Compares package names by their numeric runs, as `sort -V` does.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x.0 && y.0, x.1.parse::<u64>(), y.1.parse::<u64>()) {
            (true, Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.1.cmp(y.1),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

/// Downloads the newest package of `spec`; returns the .deb.
fn download(spec: &KernelSpec) -> Result<PathBuf> {
    let package = newest_package(spec)?;
    let download = dir().join("download");
    std::fs::create_dir_all(&download)?;
    succeeded(
        apt("apt-get")
            .args(["download", &package])
            .current_dir(&download),
        &format!("apt-get download {package}"),
    )?;
    std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))
}

/// The kernel of `spec`, from the cache or fetched and unpacked.
pub fn fetch(spec: &KernelSpec) -> Result<Kernel> {
    let cache = dir().join("kernels").join(spec.label);
    if let Some(k) = unpacked(spec.label, &cache)? {
        return Ok(k);
    }
    // Indexes go stale as Debian moves on: on any failure, refresh and retry.
    let deb = match download(spec) {
        Ok(deb) => deb,
        Err(_) => {
            update_indexes()?;
            download(spec)?
        }
    };
    let partial = cache.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::rename(&partial, &cache)?;
    let _ = std::fs::remove_file(&deb);
    unpacked(spec.label, &cache)?.with_context(|| format!("{} holds no vmlinuz", deb.display()))
}

fn unpacked(label: &'static str, cache: &Path) -> Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(cache.join("boot")) else {
        return Ok(None);
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            let modules = ["lib/modules", "usr/lib/modules"]
                .iter()
                .map(|m| cache.join(m).join(release))
                .find(|p| p.is_dir())
                .with_context(|| format!("no module tree for {release} in {}", cache.display()))?;
            return Ok(Some(Kernel {
                label,
                release: release.to_string(),
                vmlinuz: e.path(),
                modules,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_by_version_not_by_text() {
        let mut v = [
            "linux-image-6.12.95+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.12.100+deb12-cloud-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v.last(), Some(&"linux-image-6.12.117+deb12-cloud-amd64"));
    }
}
