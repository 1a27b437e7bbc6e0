//! What a syscall policy reads from the caller's memory: string and buffer
//! arguments, copied after the record's header, a descriptor's path
//! (`fd`), and for strings and paths that a selector filters on, the
//! lookups that say which selectors hold them.
use aya_ebpf::helpers::generated::{
    bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str,
};
use sensor_common::{
    arg_read, str_selector, MAX_VALUE_LEN, STR_KEY_HEADER, SYSCALL_ARGS, SYS_BLOB_MAX, SYS_DATA_CAP,
};

use super::{SysEval, STR_EQUAL_HITS, STR_POSTFIX_HITS, STR_PREFIX_HITS};
use crate::kernel::off;
use crate::maps::{PATH_SCRATCH, SYS_EVAL, SYS_STR_EQUAL, SYS_STR_POSTFIX, SYS_STR_PREFIX};

crate::looping::forms!(copy_arg, copy_callback, snsr_loop_sys_arg);

/// Copies argument `index` if the policies read it from user memory, and
/// looks a string (or an `fd`'s path) up if a selector filters on it.
#[inline(always)]
fn copy_arg(index: u64) -> i64 {
    let Some(ep) = SYS_EVAL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let ev = unsafe { &mut *ep };
    // Masked, not only compared: a bound learned from a comparison does
    // not reach a copy the compiler spilled before it on 5.10.
    let i = index as usize & 7;
    if i >= SYSCALL_ARGS {
        return 1;
    }
    ev.str_hits[i] = [0; 3];
    let code = ev.nr.reads[i];
    if code == arg_read::NONE {
        return 0;
    }
    let bit = 1u8 << i;
    // One call of `look_up` in this body: 5.10's verifier walks its
    // reversing loop once per call site.
    let (off, len) = if code == arg_read::FD {
        // Copied by `copy_fd` before this loop.
        if ev.event.read & bit == 0 {
            return 0;
        }
        (ev.fd_off as usize, ev.event.lens[i] as usize)
    } else {
        match copy_user(ev, i, code, bit) {
            Some(at) => at,
            None => return 0,
        }
    };
    if code < arg_read::BUFFER && ev.nr.matched & bit != 0 {
        // The string without its NUL.
        look_up(ev, i, off, len.saturating_sub(1));
    }
    0
}

/// Copies string or buffer argument `i` after the data in use; returns
/// where it landed and its length.
#[inline(always)]
fn copy_user(ev: &mut SysEval, i: usize, code: u8, bit: u8) -> Option<(usize, usize)> {
    let off = ev.used as usize & (SYS_DATA_CAP - 1);
    if off > SYS_DATA_CAP - SYS_BLOB_MAX {
        // No room left in the record: the argument is reported cut.
        ev.event.truncated |= bit;
        return None;
    }
    let src = ev.event.args[i] as *const core::ffi::c_void;
    // SAFETY: off <= SYS_DATA_CAP - SYS_BLOB_MAX, and `data` has
    // 2 * SYS_BLOB_MAX bytes of slack past the cap.
    let dst = unsafe { ev.data.as_mut_ptr().add(off) }.cast();
    let n = if code == arg_read::STRING {
        // SAFETY: the helper checks the user address.
        let r = unsafe { bpf_probe_read_user_str(dst, SYS_BLOB_MAX as u32, src) };
        if r <= 0 {
            return None;
        }
        let n = r as usize & (2 * SYS_BLOB_MAX - 1);
        if n >= SYS_BLOB_MAX {
            ev.event.truncated |= bit;
        }
        n
    } else {
        let size = ev.event.args[(code - arg_read::BUFFER) as usize % SYSCALL_ARGS];
        if size > SYS_BLOB_MAX as u64 {
            ev.event.truncated |= bit;
        }
        let n = if size > SYS_BLOB_MAX as u64 {
            SYS_BLOB_MAX
        } else {
            size as usize
        } & (2 * SYS_BLOB_MAX - 1);
        // SAFETY: the helper checks the user address; n fits the slack.
        if unsafe { bpf_probe_read_user(dst, n as u32, src) } != 0 {
            return None;
        }
        n
    };
    ev.event.lens[i] = n as u16;
    ev.event.read |= bit;
    ev.used = (off + n) as u64;
    Some((off, n))
}

/// Which selectors hold string argument `i` (`len` bytes at `data[off..]`)
/// in their Equal, Prefix and Postfix sets.
#[inline(always)]
fn look_up(ev: &mut SysEval, i: usize, off: usize, len: usize) {
    let n = if len > MAX_VALUE_LEN {
        MAX_VALUE_LEN
    } else {
        len
    };
    // The bank's mark, as in the exec and connect string keys.
    let bank = str_selector(0, ev.bank as u32);
    zero(&mut ev.forward.data);
    ev.forward.data[0] = bank;
    ev.forward.data[1] = i as u8;
    // SAFETY: n <= 254 fits data[2..]; the source is our own copy.
    unsafe {
        bpf_probe_read_kernel(
            ev.forward.data.as_mut_ptr().add(STR_KEY_HEADER).cast(),
            (n & 0xff) as u32,
            ev.data.as_ptr().add(off & (SYS_DATA_CAP - 1)).cast(),
        );
    }
    let bits = ((STR_KEY_HEADER + n) * 8) as u32;
    if len <= MAX_VALUE_LEN {
        // SAFETY: plain u64 values.
        if let Some(m) = unsafe { SYS_STR_EQUAL.get(&ev.forward.data) } {
            ev.str_hits[i][STR_EQUAL_HITS] = *m;
        }
    }
    ev.forward.prefix_len = bits;
    if let Some(m) = SYS_STR_PREFIX.get(&ev.forward) {
        ev.str_hits[i][STR_PREFIX_HITS] = *m;
    }
    // The string's last bytes, reversed: bytes past its length are
    // ignored by the lookup, whose prefix stops there.
    ev.reversed.data[0] = bank;
    ev.reversed.data[1] = i as u8;
    let last = off + len;
    for j in 0..MAX_VALUE_LEN {
        if j < n {
            if let Some(b) = ev
                .data
                .get(last.wrapping_sub(1 + j) & (2 * SYS_DATA_CAP - 1))
            {
                ev.reversed.data[STR_KEY_HEADER + j] = *b;
            }
        }
    }
    ev.reversed.prefix_len = bits;
    if let Some(m) = SYS_STR_POSTFIX.get(&ev.reversed) {
        ev.str_hits[i][STR_POSTFIX_HITS] = *m;
    }
}

fn zero(data: &mut [u8; 256]) {
    let p = data.as_mut_ptr() as *mut u32;
    for i in 0..64 {
        // SAFETY: 64 u32 words cover the 256-byte array, which sits at a
        // 4-byte aligned offset of the key.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
    }
}

/// Copies the arguments the policies read from user memory.
#[inline(always)]
pub fn copy_all<const MODERN: bool>() {
    crate::looping::repeat_all::<MODERN>(SYSCALL_ARGS as u32, copy_callback, snsr_loop_sys_arg);
}

/// Resolves descriptor argument `i` (the syscall's one `fd`) to its
/// file's path, copied like a string (NUL-terminated, at most
/// `SYS_BLOB_MAX` bytes with it; a longer path is cut and flagged). Run
/// before `copy_all`, outside its loop (the path walk is a loop of its
/// own); `copy_all` looks the path up.
#[inline(always)]
pub fn copy_fd<const MODERN: bool>(ev: &mut SysEval, i: usize) -> Option<()> {
    let i = i % SYSCALL_ARGS;
    let bit = 1u8 << i;
    let file = crate::kernel::file_of_fd(ev.event.args[i])?;
    let sp = PATH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let scratch = unsafe { &mut *sp };
    let path = file.wrapping_add(off!(file_f_path) as usize);
    let r = crate::path::resolve::<MODERN>(path, scratch).ok()?;
    let off = ev.used as usize & (SYS_DATA_CAP - 1);
    if off > SYS_DATA_CAP - SYS_BLOB_MAX {
        ev.event.truncated |= bit;
        return None;
    }
    let len = r.len();
    let n = if len > SYS_BLOB_MAX - 1 {
        SYS_BLOB_MAX - 1
    } else {
        len
    } & (SYS_BLOB_MAX - 1);
    if n < len || r.truncated {
        ev.event.truncated |= bit;
    }
    // SAFETY: off <= SYS_DATA_CAP - SYS_BLOB_MAX and n < SYS_BLOB_MAX fit
    // `data`; the source is our own scratch.
    unsafe {
        bpf_probe_read_kernel(
            ev.data.as_mut_ptr().add(off).cast(),
            n as u32,
            scratch
                .buf
                .as_ptr()
                .add(r.start & (sensor_common::PATH_MAX - 1))
                .cast(),
        );
    }
    if let Some(b) = ev.data.get_mut((off + n) & (2 * SYS_DATA_CAP - 1)) {
        *b = 0;
    }
    ev.event.lens[i] = (n + 1) as u16;
    ev.event.read |= bit;
    ev.fd_off = off as u64;
    ev.used = (off + n + 1) as u64;
    Some(())
}
