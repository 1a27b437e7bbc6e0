//! The program a dynamic loader runs. `ld-linux-x86-64.so.2 /usr/bin/curl`
//! execs the loader, which maps curl itself with no exec of its own, so the
//! exec reflex would judge only the loader. Here, in the exec program, the
//! loader's command line is read the way the loader reads it (argv[0],
//! options, some of which take the next word as their value, `--`, then
//! the program) and the program's path is what the reflex judges instead.
//!
//! The parse is a loop over the argument bytes, one byte per iteration,
//! with its state in a per-CPU map (see `looping`), so that every kernel's
//! verifier checks its body once.
use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::map, maps::PerCpuArray};
use sensor_common::{ARGS_MAX, MAX_VALUE_LEN, PATH_MAX};

use crate::kernel::{off, read_ptr};
use crate::maps::{PathScratch, EXEC_DATA_CAP, EXEC_SCRATCH};

/// Words after argv[0] looked at: options and their values, then the
/// program. Above any real command line; the byte window is the bound.
const WORDS: u64 = 1024;
/// Argument bytes looked at without `bpf_loop` (before 5.17): a bounded loop
/// costs the verifier each iteration (4096 of them took 5.10's verifier
/// 30 s). A loader whose argv[0] and options fill these leaves the program
/// unknown there (the brain still reads it).
const COMPAT_BYTES: u32 = 256;

/// The parse's state between iterations.
#[repr(C)]
pub struct Parse {
    /// The argument block: `data[base..base + len]` of the exec record.
    base: u64,
    len: u64,
    /// Where the current word starts, and which word it is (0: argv[0]).
    word_start: u64,
    word: u64,
    /// Whether the current word holds a `=` (`--option=value`).
    has_eq: u64,
    /// The next word is an option's value, or (after `--`) the program.
    skip_value: u64,
    program_next: u64,
    /// The program's word, once found (`found_len` 0: not found).
    found_at: u64,
    found_len: u64,
    /// The parse is over (`FOUND`, `END` or `GAVE_UP`): later iterations
    /// return at once.
    done: u64,
}

const FOUND: u64 = 1;
/// The arguments ended with no program among them.
const END: u64 = 2;
/// More options than `WORDS` before any program.
const GAVE_UP: u64 = 3;

#[map]
static LOADER_PARSE: PerCpuArray<Parse> = PerCpuArray::with_max_entries(1, 0);

/// Whether the image just executed is a dynamic loader: its file's name
/// starts with `ld-` (glibc's `ld-linux-*.so.*` and `ld-2.31.so`, musl's
/// `ld-musl-*.so.1`).
#[inline(always)]
pub fn is_loader(mm: *const u8) -> bool {
    let name = read_ptr(mm, off!(mm_exe_file))
        .and_then(|f| read_ptr(f, off!(file_f_path) + off!(path_dentry)))
        .and_then(|d| read_ptr(d, off!(dentry_d_name) + off!(qstr_name)));
    let Ok(name) = name else {
        return false;
    };
    let mut b = [0u8; 4];
    // SAFETY: a 4-byte read into a local; a bad address returns an error.
    let r = unsafe { bpf_probe_read_kernel(b.as_mut_ptr().cast(), 4, name.cast()) };
    r == 0 && b[0] == b'l' && b[1] == b'd' && b[2] == b'-'
}

/// The program word of the loader's arguments (`base`, `len` in the exec
/// record's data), copied into `path` so that it ends at `PATH_MAX`, as the
/// reflex reads a path. A relative word gets a leading `/`, so that a
/// `Postfix` value such as `/curl` still matches `curl`. Returns the path's
/// start and whether its head is unknown (the parse ran out of bytes, or a
/// name too long to compare): the reflex then fails closed, as on a
/// truncated path. `None`: the loader runs no program (`--version`).
#[inline(always)]
pub fn program<const MODERN: bool>(
    base: usize,
    len: usize,
    path: &mut PathScratch,
) -> Option<(usize, bool)> {
    let Some(p) = LOADER_PARSE.get_ptr_mut(0) else {
        return Some((PATH_MAX, true));
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let p = unsafe { &mut *p };
    *p = Parse {
        base: base as u64,
        len: len as u64,
        word_start: 0,
        word: 0,
        has_eq: 0,
        skip_value: 0,
        program_next: 0,
        found_at: 0,
        found_len: 0,
        done: 0,
    };
    let bytes = if MODERN {
        ARGS_MAX as u32
    } else {
        COMPAT_BYTES
    };
    crate::looping::repeat_all::<MODERN>(bytes, byte_callback, snsr_loop_loader_byte);
    let (at, n) = (p.found_at as usize, p.found_len as usize);
    if n == 0 {
        // Parsed to the end with no program; or out of bytes or words
        // first, which an attacker can pad for: unknown.
        return if p.done == END {
            None
        } else {
            Some((PATH_MAX, true))
        };
    }
    if n > MAX_VALUE_LEN - 1 {
        return Some((PATH_MAX, true));
    }
    let Some(rec) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return Some((PATH_MAX, true));
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let data = unsafe { &(*rec).data };
    let start = PATH_MAX - n;
    // SAFETY: n < 254, so the copy ends at PATH_MAX inside the buffer; the
    // source is the record's own argument block.
    unsafe {
        bpf_probe_read_kernel(
            path.buf.as_mut_ptr().add(start & (PATH_MAX - 1)).cast(),
            (n & 0xff) as u32,
            data.as_ptr().add((base + at) & (EXEC_DATA_CAP - 1)).cast(),
        );
    }
    if data[(base + at) & (EXEC_DATA_CAP - 1)] != b'/' {
        path.buf[(start - 1) & (PATH_MAX - 1)] = b'/';
        return Some((start - 1, false));
    }
    Some((start, false))
}

crate::looping::forms!(parse_byte, byte_callback, snsr_loop_loader_byte);

/// One byte of the arguments; returns 1 to stop.
#[inline(always)]
fn parse_byte(i: u64) -> i64 {
    let (Some(p), Some(rec)) = (LOADER_PARSE.get_ptr_mut(0), EXEC_SCRATCH.get_ptr(0)) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let (p, data) = unsafe { (&mut *p, &(*rec).data) };
    if p.done != 0 {
        return 1;
    }
    let byte = |k: u64| data[((p.base + k) as usize) & (EXEC_DATA_CAP - 1)];
    // The block's end ends the last word, NUL or not.
    let c = if i < p.len { byte(i) } else { 0 };
    if c == b'=' {
        p.has_eq = 1;
    }
    if c != 0 {
        return 0;
    }
    // A word ends at i.
    let (ws, word) = (p.word_start, p.word);
    let n = i - ws;
    p.word = word + 1;
    p.word_start = i + 1;
    let has_eq = p.has_eq != 0;
    p.has_eq = 0;
    if word == 0 {
        // argv[0], whatever it says.
    } else if p.program_next != 0 || (p.skip_value == 0 && byte(ws) != b'-') {
        p.found_at = ws;
        p.found_len = n;
        p.done = FOUND;
        return 1;
    } else if p.skip_value != 0 {
        p.skip_value = 0;
    } else if n == 2 && byte(ws + 1) == b'-' {
        p.program_next = 1; // `--`
    } else {
        p.skip_value = (!has_eq
            && takes_value(byte(ws + 1), byte(ws + 2), byte(ws + 3), byte(ws + 10)))
            as u64;
    }
    if i >= p.len {
        p.done = END;
        return 1;
    }
    if p.word > WORDS {
        p.done = GAVE_UP;
        return 1;
    }
    0
}

/// Whether a loader option, by its bytes 1, 2, 3 and 10, takes the next
/// word as its value: glibc's `--library-path`, `--inhibit-rpath`,
/// `--audit`, `--preload`, `--argv0` and `--glibc-hwcaps-*` (not
/// `--inhibit-cache`, `--list` or `--verify`).
#[inline(always)]
fn takes_value(b1: u8, b2: u8, b3: u8, b10: u8) -> bool {
    if b1 != b'-' {
        return false;
    }
    match b2 {
        b'l' => b3 == b'i', // --library-path, not --list
        b'p' | b'g' => true,
        b'a' => b3 == b'u' || b3 == b'r',
        b'i' => b10 == b'r',
        _ => false,
    }
}
