//! Resolves a `struct path` to a string the way the kernel's `d_path` does,
//! walking dentries up to each mount's root and crossing to the parent mount,
//! so the result is the path as the process's mount namespace sees it.
use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use sensor_common::PATH_MAX;

use crate::kernel::{off, read, read_ptr};
use crate::maps::{PathScratch, PATH_SCRATCH, WALK};

/// Steps (components plus mount crossings) walked before giving up; the path
/// is then flagged truncated.
const MAX_STEPS: u32 = 128;
const MASK: usize = PATH_MAX - 1;

/// A resolved path lives in `buf[start..PATH_MAX]`.
pub struct Resolved {
    pub start: usize,
    pub truncated: bool,
}

impl Resolved {
    pub fn len(&self) -> usize {
        PATH_MAX - self.start
    }
}

/// The walk's state between loop steps. It lives in a map, not on the
/// stack: values read from a map are unknown to the verifier, so it checks
/// one step instead of following `pos` through every iteration.
#[repr(C)]
pub struct Walk {
    dentry: u64,
    vfsmnt: u64,
    mnt: u64,
    pos: u64,
    /// 0 running, 1 reached the root, 2 failed a read or ran out of room.
    end: u64,
}

crate::looping::forms!(step, step_callback, snsr_loop_path);

/// One step up the tree; returns 1 to stop.
#[inline(always)]
fn step(_index: u64) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let w = unsafe { &mut *w };
    match try_step(w) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => {
            w.end = 2;
            1
        }
    }
}

fn try_step(w: &mut Walk) -> Result<bool, i32> {
    let (dentry, vfsmnt, mnt) = (
        w.dentry as *const u8,
        w.vfsmnt as *const u8,
        w.mnt as *const u8,
    );
    let mnt_root = read_ptr(vfsmnt, off!(vfsmount_mnt_root))?;
    let parent = read_ptr(dentry, off!(dentry_d_parent))?;
    // A dentry that is its own parent without being its mount's root is a
    // pseudo file's (memfd_create's `memfd:NAME`): its name is the whole
    // path, as `d_path` reports it.
    let pseudo = dentry == parent && dentry != mnt_root;
    if !pseudo && (dentry == mnt_root || dentry == parent) {
        let mnt_parent = read_ptr(mnt, off!(mount_mnt_parent))?;
        if dentry == mnt_root && mnt_parent != mnt {
            // Cross from this mount's root to where it is mounted.
            w.dentry = read_ptr(mnt, off!(mount_mnt_mountpoint))? as u64;
            w.mnt = mnt_parent as u64;
            w.vfsmnt = mnt_parent as u64 + off!(mount_mnt) as u64;
            return Ok(true);
        }
        w.end = 1;
        return Ok(false);
    }
    let d_name = off!(dentry_d_name);
    let len = read::<u32>(dentry, d_name + off!(qstr_len))? as usize & 0xff;
    let name = read_ptr(dentry, d_name + off!(qstr_name))?;
    let pos = w.pos as usize;
    if len + 2 > pos {
        return Err(0);
    }
    let scratch = PATH_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let buf = unsafe { (*scratch).buf.as_mut_ptr() };
    let pos = pos - len;
    // The size is reloaded and masked right at the call: 6.12's verifier
    // loses the unsigned bound of the register the compiler keeps `len` in
    // across the comparison above ("R2 unbounded memory access").
    // SAFETY: a read of our own local.
    let size = unsafe { core::ptr::read_volatile(&len) } as u32 & 0xff;
    // SAFETY: (pos & MASK) + size < PATH_MAX + 256, the buffer's size.
    unsafe {
        bpf_probe_read_kernel(buf.add(pos & MASK).cast(), size, name.cast());
        *buf.add((pos - 1) & MASK) = b'/';
    }
    w.pos = (pos - 1) as u64;
    w.dentry = parent as u64;
    if pseudo {
        w.end = 1;
        return Ok(false);
    }
    Ok(true)
}

/// Writes the path that `path` (a kernel `struct path *`) names into the
/// per-CPU path scratch, ending at `PATH_MAX`.
#[inline(always)]
pub fn resolve<const MODERN: bool>(
    path: *const u8,
    scratch: &mut PathScratch,
) -> Result<Resolved, i32> {
    let vfsmnt = read_ptr(path, off!(path_mnt))?;
    let wp = WALK.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let w = unsafe { &mut *wp };
    *w = Walk {
        dentry: read_ptr(path, off!(path_dentry))? as u64,
        vfsmnt: vfsmnt as u64,
        mnt: (vfsmnt as u64).wrapping_sub(off!(mount_mnt) as u64),
        pos: PATH_MAX as u64,
        end: 0,
    };
    crate::looping::repeat::<MODERN>(MAX_STEPS, step_callback, snsr_loop_path);
    let mut pos = w.pos as usize & (PATH_MAX * 2 - 1);
    if pos >= PATH_MAX {
        pos = PATH_MAX - 1;
        scratch.buf[PATH_MAX - 1] = b'/';
    }
    Ok(Resolved {
        start: pos,
        truncated: w.end != 1,
    })
}
