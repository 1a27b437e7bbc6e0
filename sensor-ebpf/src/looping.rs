//! Loops that every kernel's verifier accepts. Each program that loops is
//! built twice from one body, told apart by the const `MODERN`:
//! - modern (5.18 and later): `bpf_loop`, whose callback the verifier checks
//!   once whatever the count, and `bpf_set_retval` in cgroup programs;
//! - compat (5.10 to 5.17): the same callback called from a bounded loop,
//!   which the verifier walks iteration by iteration (bounded loops exist
//!   since 5.3), and no `bpf_set_retval`.
//!
//! The loader probes the kernel and attaches one form of each program.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;

/// A loop body: gets the iteration index, returns 1 to stop.
pub type Step = extern "C" fn(u64, *mut c_void) -> i64;

/// Runs `step` for 0..n until it returns non-zero.
#[inline(always)]
pub fn repeat<const MODERN: bool>(n: u32, step: Step) {
    if MODERN {
        // SAFETY: the callbacks reach their state through per-CPU maps and
        // take no context pointer.
        unsafe { bpf_loop(n, step as *mut c_void, core::ptr::null_mut(), 0) };
    } else {
        let mut i = 0;
        while i < n {
            if step(i as u64, core::ptr::null_mut()) != 0 {
                break;
            }
            i += 1;
        }
    }
}
