//! The pseudo file systems the sensor needs: bpffs (pinning), tracefs
//! (tracepoint ids) and securityfs (LSM state). Mounted when missing, as a
//! DaemonSet container often starts without them.
use std::ffi::CString;

/// (file system type, mount point)
const NEEDED: &[(&str, &str)] = &[
    ("bpf", "/sys/fs/bpf"),
    ("tracefs", "/sys/kernel/tracing"),
    ("securityfs", "/sys/kernel/security"),
];

#[derive(Debug, thiserror::Error)]
#[error("mounting {fstype} at {target}: {source}")]
pub struct MountError {
    fstype: &'static str,
    target: &'static str,
    source: std::io::Error,
}

fn mounted_fstype(target: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&target)).then(|| fields.get(sep + 1).map(|s| s.to_string()))?
    })
}

/// Mounts each needed file system that is not mounted yet. securityfs is
/// optional (only LSM hooks need it), so its failure is logged, not fatal.
pub fn ensure() -> Result<(), MountError> {
    for &(fstype, target) in NEEDED {
        if mounted_fstype(target).as_deref() == Some(fstype) {
            continue;
        }
        let c = |s: &str| CString::new(s).unwrap_or_default();
        let (src, tgt, ty) = (c(fstype), c(target), c(fstype));
        // SAFETY: NUL-terminated strings that outlive the call.
        let r =
            unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
        if r != 0 {
            let source = std::io::Error::last_os_error();
            if fstype == "securityfs" {
                tracing::warn!(%source, "securityfs is not mounted and could not be mounted");
                continue;
            }
            return Err(MountError {
                fstype,
                target,
                source,
            });
        }
        tracing::info!(fstype, target, "mounted");
    }
    Ok(())
}
