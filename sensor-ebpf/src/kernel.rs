//! Reads of kernel struct fields at the offsets the loader found in BTF,
//! and the current task's file behind a descriptor.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

/// The offset of a field, read with a volatile load so that the compiler does
/// not fold the zero initialiser the object file carries.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: a u32 of our own global.
        unsafe { core::ptr::read_volatile(&$crate::maps::OFFSETS.$field) }
    };
}
pub(crate) use off;

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: probe_read checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
}

#[inline(always)]
pub fn read_ptr(base: *const u8, off: u32) -> Result<*const u8, i32> {
    read::<*const u8>(base, off)
}

/// The `struct file` of the current task's descriptor `fd`:
/// task->files->fdt->fd[fd], bounded by the table's size.
#[inline(always)]
pub fn file_of_fd(fd: u64) -> Option<*const u8> {
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = read_ptr(task, off!(task_files)).ok()?;
    let fdt = read_ptr(files, off!(files_fdt)).ok()?;
    let max = read::<u32>(fdt, off!(fdt_max_fds)).ok()?;
    if fd >= max as u64 {
        return None;
    }
    let array = read_ptr(fdt, off!(fdt_fd)).ok()?;
    let file = read_ptr(array.wrapping_add(fd as usize * 8), 0).ok()?;
    (!file.is_null()).then_some(file)
}
