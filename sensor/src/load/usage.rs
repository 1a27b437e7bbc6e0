//! How full the kernel's maps are (Tetragon's `tetragon_map_entries` and
//! `tetragon_map_capacity`): the tables a policy, the process states or the
//! quarantines can fill. Counted by walking the keys, which the kernel
//! answers one syscall at a time, so the daemon asks rarely.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{Map, MapData};

use super::Kernel;

/// The maps worth watching: each can fill up and refuse a write.
pub const WATCHED: [&str; 9] = [
    "PROCS",
    "QUARANTINE",
    "SCOPE_CGROUPS",
    "STR_EQUAL",
    "STR_PREFIX",
    "STR_POSTFIX",
    "NET_ADDR",
    "NET_VALUE",
    "PENDING_SIGNALS",
];

/// `BPF_MAP_GET_NEXT_KEY`.
const GET_NEXT_KEY: libc::c_long = 4;

#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

fn data(m: &Map) -> Option<&MapData> {
    match m {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::LpmTrie(d) => Some(d),
        _ => None,
    }
}

/// Keys in the map, walked with `BPF_MAP_GET_NEXT_KEY` (a key deleted
/// under the walk restarts it at the first key: the walk stops at
/// `limit`).
fn count_keys(fd: BorrowedFd<'_>, key_size: usize, limit: u32) -> std::io::Result<u32> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    let mut n = 0;
    while n < limit {
        let attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: attr points at buffers of the map's key size that live
        // across the call; the kernel writes only `next_key`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(n),
                _ => Err(e),
            };
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(n)
}

impl Kernel {
    /// (map, entries in use, capacity) for each watched map.
    pub fn map_usage(&self) -> Vec<(&'static str, u32, u32)> {
        WATCHED
            .iter()
            .filter_map(|&name| {
                let d = data(self.maps.get(name)?)?;
                let info = d.info().ok()?;
                let cap = info.max_entries();
                match count_keys(d.fd().as_fd(), info.key_size() as usize, cap) {
                    Ok(n) => Some((name, n, cap)),
                    Err(e) => {
                        tracing::debug!(map = name, error = %e, "counting map entries");
                        None
                    }
                }
            })
            .collect()
    }
}
