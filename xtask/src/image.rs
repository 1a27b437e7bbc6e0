//! `cargo xtask image`: the daemon's OCI image, built from nothing pulled
//! from anywhere: one layer holding the release binary, the shared
//! libraries `ldd` says it loads (glibc, libgcc_s and the loader, from this
//! machine), and the shipped policies. Saved as an OCI image layout in a tar
//! archive, `target/sensor-image-<version>.oci.tar`, which `podman load`,
//! `skopeo copy oci-archive:...` and `ctr image import` take.
//!
//! `check` unpacks that archive the way a runtime would (index → manifest →
//! layers, every digest verified) and runs the binary chrooted in the result
//! (`--version`, `policy check` on the policies it carries, and a broken
//! policy, which must exit 2): no container engine runs here, the image's
//! files are what is tested.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{root, run};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the policies are inside the image (the DaemonSet mounts its
/// ConfigMap over them).
const POLICIES: &str = "etc/sensor/policies";

fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The archive's path.
pub fn archive() -> PathBuf {
    root().join(format!("target/sensor-image-{VERSION}.oci.tar"))
}

/// The shared objects `binary` loads, as absolute paths on this machine.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `from` to the same absolute path under `rootfs`, through
/// symlinks (the loader's path is a link on Debian).
fn copy_into(rootfs: &Path, from: &Path) -> Result<()> {
    let to = rootfs.join(from.strip_prefix("/")?);
    std::fs::create_dir_all(to.parent().context("a parent")?)?;
    std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// A reproducible tar of `dir`'s contents.
fn tar(dir: &Path, out: &Path) -> Result<()> {
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .args([
            "--mtime=@0",
            "--format=posix",
            "--pax-option=delete=atime,delete=ctime",
        ])
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg("."))
}

/// Writes `bytes` as a blob of the layout; returns its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Result<Value> {
    let digest = sha256(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&digest), bytes)?;
    Ok(json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len()}))
}

pub fn build(sensor: &Path) -> Result<PathBuf> {
    let work = root().join("target/image");
    let _ = std::fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    let layout = work.join("oci");
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;

    std::fs::create_dir_all(rootfs.join("usr/bin"))?;
    std::fs::copy(sensor, rootfs.join("usr/bin/sensor"))?;
    for lib in shared_libraries(sensor)? {
        copy_into(&rootfs, &lib)?;
    }
    std::fs::create_dir_all(rootfs.join(POLICIES))?;
    for f in std::fs::read_dir(root().join("policies"))? {
        let f = f?.path();
        if f.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(
                &f,
                rootfs.join(POLICIES).join(f.file_name().context("name")?),
            )?;
        }
    }
    // Mount points the DaemonSet fills; the root filesystem is read-only.
    for d in [
        "proc",
        "sys",
        "tmp",
        "var/lib/sensor",
        "var/log/sensor",
        "var/run/sensor",
    ] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }

    let layer_tar = work.join("layer.tar");
    tar(&rootfs, &layer_tar)?;
    let layer_bytes = std::fs::read(&layer_tar)?;
    let layer = blob(
        &layout,
        "application/vnd.oci.image.layer.v1.tar",
        &layer_bytes,
    )?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/sensor"],
            "Cmd": ["run", "--policy-dir=/etc/sensor/policies"],
            "Env": ["PATH=/usr/bin"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "sensor",
                "org.opencontainers.image.version": VERSION,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        "history": [{"created_by": "cargo xtask image"}],
    });
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config)?,
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest)?,
    )?;
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": VERSION});
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let out = archive();
    tar(&layout, &out)?;
    eprintln!(
        "xtask: image sensor:{VERSION} ({} MiB layer) saved to {}",
        layer_bytes.len() >> 20,
        out.display()
    );
    Ok(out)
}

/// Reads the blob `desc` names, checking its digest and size.
fn read_blob(layout: &Path, desc: &Value) -> Result<Vec<u8>> {
    let digest = desc["digest"].as_str().context("a digest")?;
    let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex))?;
    if sha256(&bytes) != hex || desc["size"].as_u64() != Some(bytes.len() as u64) {
        bail!("blob {digest} does not match its descriptor");
    }
    Ok(bytes)
}

/// Runs `sensor ARGS` inside `rootfs` (with /proc mounted, as a runtime
/// would, in a mount namespace of its own so nothing outlives the run).
fn in_image(rootfs: &Path, args: &str) -> Result<std::process::Output> {
    let script = format!(
        "mount -t proc proc {root}/proc && exec chroot {root} /usr/bin/sensor {args}",
        root = rootfs.display()
    );
    Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "sh", "-c", &script])
        .output()
        .context("running unshare")
}

pub fn check(archive: &Path) -> Result<()> {
    let work = root().join("target/image-check");
    let _ = std::fs::remove_dir_all(&work);
    let layout = work.join("oci");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&layout)?;
    std::fs::create_dir_all(&rootfs)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout))?;
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let desc = &index["manifests"][0];
    let tag = desc["annotations"]["org.opencontainers.image.ref.name"].as_str();
    if tag != Some(VERSION) {
        bail!("the image is tagged {tag:?}, not {VERSION}");
    }
    let manifest: Value = serde_json::from_slice(&read_blob(&layout, desc)?)?;
    let config: Value = serde_json::from_slice(&read_blob(&layout, &manifest["config"])?)?;
    let layers = manifest["layers"].as_array().context("layers")?;
    for (i, l) in layers.iter().enumerate() {
        let bytes = read_blob(&layout, l)?;
        if config["rootfs"]["diff_ids"][i] != l["digest"] {
            bail!("layer {i}: its diff_id is not its digest (uncompressed layers)");
        }
        let t = work.join(format!("layer{i}.tar"));
        std::fs::write(&t, bytes)?;
        run(Command::new("tar")
            .arg("-xf")
            .arg(&t)
            .arg("-C")
            .arg(&rootfs))?;
    }

    let out = in_image(&rootfs, "--version")?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || said.trim() != format!("sensor {VERSION}") {
        bail!(
            "sensor --version in the image: {:?} {said} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = in_image(
        &rootfs,
        "policy check --pod-cidr 10.0.0.0/16 --service-cidr 10.96.0.0/12 /etc/sensor/policies/reflex.yaml /etc/sensor/policies/brain.yaml /etc/sensor/policies/egress-cluster.yaml /etc/sensor/policies/vaccine.yaml",
    )?;
    if !out.status.success() {
        bail!(
            "policy check in the image: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(
        rootfs.join("tmp/bad.yaml"),
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: bad}\nspec:\n  kprobes:\n  - call: no_such_function_anywhere\n",
    )?;
    let out = in_image(&rootfs, "policy check /tmp/bad.yaml")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2) || !err.contains("bad.yaml") {
        bail!("a bad policy in the image: {:?} {err}", out.status);
    }
    eprintln!(
        "xtask: image check: sensor --version, policy check of the shipped policies and of a bad one (exit 2) ran inside sensor:{VERSION}"
    );
    Ok(())
}

pub fn main() -> Result<()> {
    let sensor = crate::build_sensor()?;
    let archive = build(&sensor)?;
    check(&archive)
}
