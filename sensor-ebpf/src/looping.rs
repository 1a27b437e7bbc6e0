//! Loops that every kernel's verifier accepts. Each program that loops is
//! built twice from one body, told apart by the const `MODERN`:
//! - modern (5.17 and later): `bpf_loop`, whose callback the verifier checks
//!   once whatever the count;
//! - compat (5.10 to 5.16): a bounded loop (5.3) that calls the body as a
//!   global function (5.6), which the verifier also checks once, on its
//!   own, instead of walking the body once per iteration (64 selectors of
//!   body walked inline exceed the verifier's budget).
//!
//! A body reaches its state through per-CPU maps, never through pointers:
//! a global function takes scalars only. The loader probes the kernel and
//! attaches one form of each program.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;

/// A `bpf_loop` callback: gets the iteration index, returns 1 to stop.
pub type Callback = extern "C" fn(u64, *mut c_void) -> i64;
/// The same body as a global function.
pub type Global = extern "C" fn(u64) -> i64;

/// Declares loop body `$body` (`fn(index: u64) -> i64`) in both forms: the
/// `bpf_loop` callback `$callback` and the global function `$global`
/// (exported by name in `xtask/src/ebpf.rs`, so that its BTF linkage stays
/// global).
macro_rules! forms {
    ($body:ident, $callback:ident, $global:ident) => {
        extern "C" fn $callback(index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
            $body(index)
        }

        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $global(index: u64) -> i64 {
            $body(index)
        }
    };
}
pub(crate) use forms;

/// Runs the body for 0..n until it returns non-zero.
#[inline(always)]
pub fn repeat<const MODERN: bool>(n: u32, callback: Callback, global: Global) {
    if MODERN {
        // SAFETY: the callbacks reach their state through per-CPU maps and
        // take no context pointer.
        unsafe { bpf_loop(n, callback as *mut c_void, core::ptr::null_mut(), 0) };
    } else {
        let mut i = 0;
        while i < n {
            if global(i as u64) != 0 {
                break;
            }
            i += 1;
        }
    }
}

/// Runs the body for 0..n, stopping early only with `bpf_loop`. Without it
/// the loop runs all n iterations (the body returns at once once done):
/// an early exit from a bounded loop gives the verifier one path per
/// iteration through the whole rest of the program, and for a loop of
/// hundreds that is more than its budget.
#[inline(always)]
pub fn repeat_all<const MODERN: bool>(n: u32, callback: Callback, global: Global) {
    if MODERN {
        // SAFETY: as in `repeat`.
        unsafe { bpf_loop(n, callback as *mut c_void, core::ptr::null_mut(), 0) };
    } else {
        let mut i = 0;
        while i < n {
            global(i as u64);
            i += 1;
        }
    }
}
