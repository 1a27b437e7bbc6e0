//! Writing the kernel's state other than policy (`tables` has that): pod
//! scopes, quarantined cgroups, seeded process states and the runtime
//! switches; and reading its counters. The same calls serve a set this
//! daemon loaded and one it adopted.
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use sensor_common::{Config, ProcState, BANKS};

use super::{map_err, Kernel, LoadError, LOST_KINDS};

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

impl Kernel {
    /// Cuts cgroup `id` (and everything under it) off the network.
    pub fn quarantine(&mut self, id: u64) -> Result<(), LoadError> {
        let mut q: HashMap<_, u64, u8> =
            HashMap::try_from(self.map_mut("QUARANTINE")?).map_err(map_err("QUARANTINE"))?;
        q.insert(id, 1, 0).map_err(map_err("QUARANTINE"))?;
        self.set_quarantine_active(true)
    }

    /// Turns the programs' quarantine lookups on or off.
    fn set_quarantine_active(&mut self, on: bool) -> Result<(), LoadError> {
        self.update_config(|c| c.quarantine_active = on as u32)
    }

    /// Tells the programs that `POD_SCOPES` is in use.
    pub fn enable_pod_scopes(&mut self) -> Result<(), LoadError> {
        self.update_config(|c| c.n_scopes = c.n_scopes.max(1))
    }

    /// Which records from pods wake the reader at once
    /// (`sensor_common::pod_wakeups` bits).
    pub fn set_pod_wakeups(&mut self, bits: u32) -> Result<(), LoadError> {
        self.update_config(|c| c.pod_wakeups = bits)
    }

    /// Whether exec records carry the new image's credentials.
    pub fn set_process_cred(&mut self, on: bool) -> Result<(), LoadError> {
        self.update_config(|c| c.process_cred = on as u32)
    }

    /// Whether exec records carry the task's namespaces.
    pub fn set_process_ns(&mut self, on: bool) -> Result<(), LoadError> {
        self.update_config(|c| c.process_ns = on as u32)
    }

    /// Which connects and sends that hit no policy become records
    /// (`sensor_common::connect_records`).
    pub fn set_connect_records(&mut self, mode: u32) -> Result<(), LoadError> {
        self.update_config(|c| c.connect_records = mode)
    }

    /// Changes the programs' runtime switches, in both banks' entries,
    /// writing only on a change.
    pub(super) fn update_config(&mut self, f: impl Fn(&mut Config)) -> Result<(), LoadError> {
        let mut cfg: Array<_, Config> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
        for bank in 0..BANKS as u32 {
            let before = cfg.get(&bank, 0).map_err(map_err("CONFIG"))?;
            let mut c = before;
            f(&mut c);
            if c != before {
                cfg.set(bank, c, 0).map_err(map_err("CONFIG"))?;
            }
        }
        Ok(())
    }

    /// Sets the pod-scoped policies (bit i = scope i+1) for tasks under
    /// cgroup `id`; 0 removes the entry.
    pub fn set_pod_scopes(&mut self, id: u64, bits: u64) -> Result<(), LoadError> {
        let mut m: HashMap<_, u64, u64> =
            HashMap::try_from(self.map_mut("POD_SCOPES")?).map_err(map_err("POD_SCOPES"))?;
        if bits != 0 {
            return m.insert(id, bits, 0).map_err(map_err("POD_SCOPES"));
        }
        match m.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("POD_SCOPES")(e)),
        }
    }

    /// Gives cgroup `id` its network back.
    pub fn release(&mut self, id: u64) -> Result<(), LoadError> {
        let mut q: HashMap<_, u64, u8> =
            HashMap::try_from(self.map_mut("QUARANTINE")?).map_err(map_err("QUARANTINE"))?;
        match q.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("QUARANTINE")(e)),
        }
        let empty = q.keys().next().is_none();
        if empty {
            self.set_quarantine_active(false)?;
        }
        Ok(())
    }

    /// The pod scope bits the kernel holds, by pod cgroup.
    pub fn pod_scopes(&self) -> Result<Vec<(u64, u64)>, LoadError> {
        let m: HashMap<_, u64, u64> =
            HashMap::try_from(self.map("POD_SCOPES")?).map_err(map_err("POD_SCOPES"))?;
        Ok(m.iter().flatten().collect())
    }

    /// The quarantined cgroups.
    pub fn quarantined(&self) -> Result<Vec<u64>, LoadError> {
        let q: HashMap<_, u64, u8> =
            HashMap::try_from(self.map("QUARANTINE")?).map_err(map_err("QUARANTINE"))?;
        Ok(q.keys().flatten().collect())
    }

    /// Seeds the policy state of processes found in /proc. A state the exec
    /// program already wrote is newer and is kept, unless `replace`: states
    /// written under other policies (an adopted set, a policy change) name
    /// other selectors and must go.
    pub fn seed_states(
        &mut self,
        states: &[(u32, ProcState)],
        replace: bool,
    ) -> Result<(), LoadError> {
        let mut procs: HashMap<_, u32, ProcState> =
            HashMap::try_from(self.map_mut("PROCS")?).map_err(map_err("PROCS"))?;
        let flags = if replace { 0 } else { BPF_NOEXIST };
        for (pid, st) in states {
            match procs.insert(pid, st, flags) {
                Ok(()) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_err("PROCS")(e)),
            }
        }
        Ok(())
    }

    /// Records lost to a full ring buffer so far, per kind.
    pub fn lost(&self) -> Result<Vec<(&'static str, u64)>, LoadError> {
        self.per_cpu_sums("LOST", &LOST_KINDS)
    }

    /// Process states the full `PROCS` map refused so far: each is a
    /// process whose `matchBinaries`/`followChildren` state the kernel
    /// could not keep.
    pub fn refused_states(&self) -> Result<u64, LoadError> {
        let kinds = [(sensor_common::LOST_PROC_STATE, "process_state")];
        Ok(self.per_cpu_sums("LOST", &kinds)?[0].1)
    }

    /// The per-CPU counters of array `map` at each of `kinds`, summed.
    fn per_cpu_sums(
        &self,
        map: &'static str,
        kinds: &[(u32, &'static str)],
    ) -> Result<Vec<(&'static str, u64)>, LoadError> {
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(map)?).map_err(map_err(map))?;
        kinds
            .iter()
            .map(|&(k, name)| {
                let v = counters.get(&k, 0).map_err(map_err(map))?;
                Ok((name, v.iter().sum()))
            })
            .collect()
    }
}

/// `QUARANTINE_DROPS` indices, with their names: what the quarantine
/// refused in the kernel.
pub const REFUSAL_KINDS: [(u32, &str); 4] = [
    (0, "packets_egress"),
    (1, "packets_ingress"),
    (2, "packet_sockets"),
    (3, "connects"),
];

impl Kernel {
    /// What the quarantine refused so far, per kind (`REFUSAL_KINDS`).
    pub fn refusals(&self) -> Result<Vec<(&'static str, u64)>, LoadError> {
        self.per_cpu_sums("QUARANTINE_DROPS", &REFUSAL_KINDS)
    }

    /// Cgroups whose routine records went over budget, with the count of
    /// records not sent so far (`BUDGETS`, an LRU: a cgroup quiet long
    /// enough may leave and start again from zero).
    pub fn suppressed(&self) -> Result<Vec<(u64, u64)>, LoadError> {
        let m = self.map("BUDGETS")?;
        let b: HashMap<_, u64, sensor_common::Budget> =
            HashMap::try_from(m).map_err(map_err("BUDGETS"))?;
        Ok(b.iter()
            .flatten()
            .filter(|(_, v)| v.suppressed != 0)
            .map(|(k, v)| (k, v.suppressed))
            .collect())
    }
}

/// The cgroups quarantined in a pinned `QUARANTINE` map (another set's).
pub fn quarantined_in(pin: &std::path::Path) -> Result<Vec<u64>, LoadError> {
    let data = MapData::from_pin(pin).map_err(map_err("QUARANTINE"))?;
    let map = aya::maps::Map::from_map_data(data).map_err(map_err("QUARANTINE"))?;
    let q: HashMap<_, u64, u8> = HashMap::try_from(map).map_err(map_err("QUARANTINE"))?;
    Ok(q.keys().flatten().collect())
}
