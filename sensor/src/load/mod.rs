//! Loading the kernel side: pre-flight checks, struct offsets from BTF, the
//! embedded eBPF object, attaching the programs as bpf links, and pinning
//! them (`pin`) so that they outlive the process, or adopting a pinned set.
//! `attach` attaches each program in the form this kernel takes, `tables`
//! swaps policy in whole (two banks), `write` keeps the rest of the
//! kernel's state. Dropping an unpinned [`Kernel`]
//! detaches and frees everything; a pinned one keeps enforcing.
//! `probe` finds what the running kernel offers, and so which form of each
//! program is attached.
mod attach;
pub use attach::OnDemand;
pub mod btf;
mod mounts;
pub mod pin;
pub mod probe;
mod tables;
mod usage;
mod write;

pub use write::quarantined_in;

use std::collections::HashMap;
use std::path::Path;

use aya::maps::{Map, MapData, MapError, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{ProgramError, ProgramInfo};
use aya::{Ebpf, EbpfError, EbpfLoader};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time
/// (empty when it was not built).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("sensor must run as root: it loads eBPF programs")]
    NotRoot,
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing); a kernel with CONFIG_DEBUG_INFO_BTF=y is needed")]
    NoBtf,
    #[error(
        "this binary was built without the eBPF object; run `cargo xtask build-ebpf` and rebuild"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error("loading the eBPF object: {0}")]
    Object(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("enabling program statistics: {0}")]
    Stats(String),
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("program {name}: not attached through a bpf link: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("pinning {what} at {path}: {source}")]
    Pinning {
        what: String,
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("adopting {path}: {why}")]
    Adopt { path: String, why: String },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

/// The kernel side: maps and program links, loaded by this process or
/// adopted from a pinned set.
pub struct Kernel {
    /// The object this process loaded; `None` for an adopted set, whose
    /// programs are held by their links.
    ebpf: Option<Ebpf>,
    maps: HashMap<String, Map>,
    /// (program, its link), in attach order.
    links: Vec<(String, FdLink)>,
    plan: probe::Plan,
    /// The policy bank switched away from, to be emptied once no program
    /// run can still read it (see `tables`).
    retired: Option<tables::Retired>,
    /// The pinned set this kernel side lives in, once pinned or adopted:
    /// links made later are pinned there too.
    set: Option<pin::SetDir>,
    /// The cgroup v2 root the socket and packet programs attach at (known
    /// from [`Kernel::attach`] on).
    cgroup_root: Option<std::path::PathBuf>,
    /// Packet programs the policies asked for before [`Kernel::attach`]
    /// gave the cgroup root; attached there.
    deferred: Vec<OnDemand>,
}

/// The sizes of the maps an operator may set.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// The ring buffer, in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// Processes with a policy state at once (`PROCS`); preallocated, at
    /// about 100 bytes each.
    pub process_states: u32,
}

/// Record kinds the `LOST` counters are indexed by, with their names.
pub const LOST_KINDS: [(u32, &str); 5] = [
    (sensor_common::kind::EXEC, "exec"),
    (sensor_common::kind::FORK, "fork"),
    (sensor_common::kind::EXIT, "exit"),
    (sensor_common::kind::CONNECT, "connect"),
    (sensor_common::kind::SYSCALL, "syscall"),
];

/// The id of the set this binary loads on this kernel (see [`pin::build_id`]).
pub fn build_id(plan: &probe::Plan) -> String {
    pin::build_id(OBJECT, plan)
}

/// Root, BTF, the embedded object and the pseudo file systems (bpffs for
/// pins): what every load needs.
pub fn preflight() -> Result<(), LoadError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(LoadError::NoBtf);
    }
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    mounts::ensure()?;
    Ok(())
}

/// Entries of the map where an exec waits for its IMA hash: as many execs
/// as may be hashed at once (one more is decided unhashed), and 1 where
/// no hasher runs. Each holds a record with its path (about 4.5 KiB).
fn ima_pending(plan: &probe::Plan) -> u32 {
    if plan.ima_missing.is_none() {
        64
    } else {
        1
    }
}

impl Kernel {
    /// Checks the environment, loads the object with this kernel's offsets
    /// and maps of `sizes`. Nothing is attached yet; `plan` says which form
    /// of each program [`Kernel::attach`] takes.
    pub fn load(sizes: Sizes, plan: &probe::Plan) -> Result<Kernel, LoadError> {
        preflight()?;
        let offsets = btf::Btf::from_sys_fs()?.kernel_offsets()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", sizes.ring_bytes)
            .map_max_entries("PROCS", sizes.process_states)
            .map_max_entries("IMA_PENDING", ima_pending(plan))
            .load(OBJECT)?;
        // Our maps move out of the object (their fds are already in the
        // programs' instructions); the data sections stay with it.
        let names: Vec<String> = ebpf
            .maps()
            .map(|(n, _)| n.to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        let maps = names
            .into_iter()
            .filter_map(|n| ebpf.take_map(&n).map(|m| (n, m)))
            .collect();
        Ok(Kernel {
            ebpf: Some(ebpf),
            maps,
            links: Vec::new(),
            plan: plan.clone(),
            retired: None,
            set: None,
            cgroup_root: None,
            deferred: Vec::new(),
        })
    }

    /// Opens the set pinned at `set`: its maps and its links, which stay
    /// attached as they are. Nothing is loaded or attached.
    pub fn adopt(set: &pin::SetDir, plan: &probe::Plan) -> Result<Kernel, LoadError> {
        preflight()?;
        let bad = |why: String| LoadError::Adopt {
            path: set.path.display().to_string(),
            why,
        };
        let mut maps = HashMap::new();
        for (name, path) in set.map_pins() {
            let data = MapData::from_pin(&path).map_err(|e| bad(format!("map {name}: {e}")))?;
            let map = Map::from_map_data(data).map_err(|e| bad(format!("map {name}: {e}")))?;
            maps.insert(name, map);
        }
        let mut links = Vec::new();
        for (name, path) in set.link_pins() {
            let link = PinnedLink::from_pin(&path).map_err(|e| bad(format!("link {name}: {e}")))?;
            links.push((name, FdLink::from(link)));
        }
        let k = Kernel {
            ebpf: None,
            maps,
            links,
            plan: plan.clone(),
            retired: None,
            set: Some(set.clone()),
            cgroup_root: None,
            deferred: Vec::new(),
        };
        let missing: Vec<&str> = k
            .expected_programs()
            .into_iter()
            .filter(|p| !k.links.iter().any(|(n, _)| n == p))
            .collect();
        if !missing.is_empty() {
            return Err(bad(format!("no link for {}", missing.join(", "))));
        }
        Ok(k)
    }

    /// Pins every map and link into `set` (an empty set directory), then
    /// marks it complete: from then on the kernel keeps it whatever happens
    /// to this process.
    pub fn pin(&mut self, set: &pin::SetDir) -> Result<(), LoadError> {
        let failed = |what: String, path: &Path| {
            let path = path.display().to_string();
            move |e: Box<dyn std::error::Error + Send + Sync>| LoadError::Pinning {
                what,
                path,
                source: e,
            }
        };
        for (name, map) in &self.maps {
            let path = set.maps().join(name);
            map.pin(&path)
                .map_err(|e| failed(format!("map {name}"), &path)(e.into()))?;
        }
        for (name, link) in std::mem::take(&mut self.links) {
            let path = set.links().join(&name);
            let pinned = link
                .pin(&path)
                .map_err(|e| failed(format!("link {name}"), &path)(e.into()))?;
            self.links.push((name, FdLink::from(pinned)));
        }
        self.pin_programs(set)?;
        self.set = Some(set.clone());
        set.mark_complete()?;
        Ok(())
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, LoadError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let p = self
            .ebpf
            .as_mut()
            .and_then(|e| e.program_mut(name))
            .ok_or(LoadError::Missing(name))?;
        p.try_into()
            .map_err(|source| LoadError::Program { name, source })
    }

    /// Each attached program with its link id and kernel info.
    fn attached(&self) -> Vec<(String, u32, ProgramInfo)> {
        let links: Vec<(String, u32, u32)> = self
            .links
            .iter()
            .filter_map(|(name, link)| {
                let info = link.info().ok()?;
                Some((name.clone(), info.id(), info.program_id()))
            })
            .collect();
        let mut programs: HashMap<u32, ProgramInfo> = aya::programs::loaded_programs()
            .flatten()
            .filter(|p| links.iter().any(|(_, _, id)| *id == p.id()))
            .map(|p| (p.id(), p))
            .collect();
        links
            .into_iter()
            .filter_map(|(name, link, prog)| Some((name, link, programs.remove(&prog)?)))
            .collect()
    }

    /// Links this process holds: the programs attached. Counted without
    /// asking the kernel by id, which takes CAP_SYS_ADMIN.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Names of the programs attached.
    pub fn loaded_programs(&self) -> Vec<String> {
        self.attached().into_iter().map(|(n, _, _)| n).collect()
    }

    /// Per program: name, runs and total run time, as the kernel counts them
    /// while run-time statistics are enabled (see [`enable_stats`]).
    pub fn program_stats(&self) -> Vec<(String, u64, std::time::Duration)> {
        self.attached()
            .into_iter()
            .map(|(n, _, i)| (n, i.run_count(), i.run_time()))
            .collect()
    }

    /// Kernel ids of the attached programs.
    pub fn program_ids(&self) -> Vec<u32> {
        self.attached()
            .into_iter()
            .map(|(_, _, i)| i.id())
            .collect()
    }

    /// Kernel ids of the links.
    pub fn link_ids(&self) -> Vec<u32> {
        self.attached().into_iter().map(|(_, l, _)| l).collect()
    }

    /// The ring buffer, taken out once for the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let m = self
            .maps
            .remove("EVENTS")
            .ok_or(LoadError::Missing("EVENTS"))?;
        RingBuf::try_from(m).map_err(map_err("EVENTS"))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, LoadError> {
        self.maps.get_mut(name).ok_or(LoadError::Missing(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map, LoadError> {
        self.maps.get(name).ok_or(LoadError::Missing(name))
    }
}

/// A program of a pinned set, and how many links the kernel has for it.
pub struct PinnedProgram {
    pub name: String,
    pub program_id: u32,
    /// Every link in the kernel that runs this program (1 when nothing was
    /// attached twice).
    pub links_in_kernel: usize,
}

/// The programs of the set pinned at `set`, from the kernel's view.
pub fn pinned_programs(set: &pin::SetDir) -> Result<Vec<PinnedProgram>, LoadError> {
    let all: Vec<u32> = aya::programs::loaded_links()
        .flatten()
        .map(|l| l.program_id())
        .collect();
    set.link_pins()
        .into_iter()
        .map(|(name, path)| {
            let link = PinnedLink::from_pin(&path).map_err(|e| LoadError::Adopt {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            let info = FdLink::from(link).info().map_err(|e| LoadError::Adopt {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            let program_id = info.program_id();
            Ok(PinnedProgram {
                name,
                program_id,
                links_in_kernel: all.iter().filter(|p| **p == program_id).count(),
            })
        })
        .collect()
}

/// Turns on the kernel's per-program run-time statistics for as long as the
/// returned fd lives (they cost a little on every program run).
pub fn enable_stats() -> Result<std::os::fd::OwnedFd, LoadError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| LoadError::Stats(e.to_string()))
}
