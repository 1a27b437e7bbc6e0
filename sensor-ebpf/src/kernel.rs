//! Reads of kernel struct fields at the offsets the loader found in BTF.
use aya_ebpf::helpers::bpf_probe_read_kernel;

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
