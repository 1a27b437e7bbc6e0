//! Writing the kernel's tables: compiled policy, the enforcement scope,
//! pod scopes, quarantined cgroups, seeded process states and the runtime
//! switches; and reading its counters. The same calls serve a set this
//! daemon loaded and one it adopted.
use std::collections::HashSet;
use std::hash::Hash;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray};
use aya::Pod;
use sensor_common::{
    Config, ExecSelector, NetSelector, NetValueKey, ProcState, NET_ADDR_KEY_LEN, STR_KEY_LEN,
};

use super::{map_err, Kernel, LoadError, LOST_KINDS};
use crate::policy::Compiled;

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

    /// Changes the programs' runtime switches, writing only on a change.
    fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> Result<(), LoadError> {
        let mut cfg: Array<_, Config> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
        let before = cfg.get(&0, 0).map_err(map_err("CONFIG"))?;
        let mut c = before;
        f(&mut c);
        if c == before {
            return Ok(());
        }
        cfg.set(0, c, 0).map_err(map_err("CONFIG"))
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

    /// Writes compiled policy and the enforcement scope over whatever the
    /// tables hold (a fresh set, or an adopted set's older policy): new
    /// entries go in first, then the selectors and their counts, and only
    /// then do stale entries go, so that no moment enforces less than both
    /// the old and the new set would. Runtime switches (quarantine, pod
    /// scopes, wakeups) are kept.
    pub fn apply(&mut self, c: &Compiled, scope: &[u64]) -> Result<(), LoadError> {
        let equal: HashSet<[u8; STR_KEY_LEN]> = c.equal.iter().copied().collect();
        self.add_hash("STR_EQUAL", &equal)?;
        let prefix: HashSet<(u32, [u8; STR_KEY_LEN])> = c.prefix.iter().copied().collect();
        self.add_trie("STR_PREFIX", &prefix)?;
        let postfix: HashSet<(u32, [u8; STR_KEY_LEN])> = c.postfix.iter().copied().collect();
        self.add_trie("STR_POSTFIX", &postfix)?;
        let addrs: HashSet<(u32, [u8; NET_ADDR_KEY_LEN])> = c.net_addrs.iter().copied().collect();
        self.add_trie("NET_ADDR", &addrs)?;
        let values: HashSet<NetValueKey> = c.net_values.iter().copied().collect();
        self.add_hash("NET_VALUE", &values)?;
        let scope: HashSet<u64> = scope.iter().copied().collect();
        self.add_hash("SCOPE_CGROUPS", &scope)?;
        let mut sels: Array<_, ExecSelector> =
            Array::try_from(self.map_mut("EXEC_SELECTORS")?).map_err(map_err("EXEC_SELECTORS"))?;
        for (i, s) in c.selectors.iter().enumerate() {
            sels.set(i as u32, s, 0)
                .map_err(map_err("EXEC_SELECTORS"))?;
        }
        let mut nsels: Array<_, NetSelector> =
            Array::try_from(self.map_mut("NET_SELECTORS")?).map_err(map_err("NET_SELECTORS"))?;
        for (i, s) in c.net_selectors.iter().enumerate() {
            nsels
                .set(i as u32, s, 0)
                .map_err(map_err("NET_SELECTORS"))?;
        }
        let scoped = !scope.is_empty() as u32;
        self.update_config(|now| {
            *now = Config {
                scoped,
                quarantine_active: now.quarantine_active,
                n_scopes: now.n_scopes,
                pod_wakeups: now.pod_wakeups,
                ..c.config
            }
        })?;
        self.prune_hash("STR_EQUAL", &equal)?;
        self.prune_trie("STR_PREFIX", &prefix)?;
        self.prune_trie("STR_POSTFIX", &postfix)?;
        self.prune_trie("NET_ADDR", &addrs)?;
        self.prune_hash("NET_VALUE", &values)?;
        self.prune_hash("SCOPE_CGROUPS", &scope)
    }

    fn add_hash<K: Pod + Eq + Hash>(
        &mut self,
        name: &'static str,
        want: &HashSet<K>,
    ) -> Result<(), LoadError> {
        let mut m: HashMap<_, K, u8> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for k in want {
            m.insert(k, 1, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn prune_hash<K: Pod + Eq + Hash>(
        &mut self,
        name: &'static str,
        want: &HashSet<K>,
    ) -> Result<(), LoadError> {
        let mut m: HashMap<_, K, u8> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let stale: Vec<K> = m.keys().flatten().filter(|k| !want.contains(k)).collect();
        for k in stale {
            match m.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }

    fn add_trie<const N: usize>(
        &mut self,
        name: &'static str,
        want: &HashSet<(u32, [u8; N])>,
    ) -> Result<(), LoadError> {
        let mut trie: LpmTrie<_, [u8; N], u8> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for (bits, k) in want {
            trie.insert(&Key::new(*bits, *k), 1, 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    fn prune_trie<const N: usize>(
        &mut self,
        name: &'static str,
        want: &HashSet<(u32, [u8; N])>,
    ) -> Result<(), LoadError> {
        let mut trie: LpmTrie<_, [u8; N], u8> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let stale: Vec<Key<[u8; N]>> = trie
            .keys()
            .flatten()
            .filter(|k| !want.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            match trie.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
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
        let m = self.map("LOST")?;
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(m).map_err(map_err("LOST"))?;
        LOST_KINDS
            .iter()
            .map(|&(k, name)| {
                let v = lost.get(&k, 0).map_err(map_err("LOST"))?;
                Ok((name, v.iter().sum()))
            })
            .collect()
    }
}

/// The cgroups quarantined in a pinned `QUARANTINE` map (another set's).
pub fn quarantined_in(pin: &std::path::Path) -> Result<Vec<u64>, LoadError> {
    let data = MapData::from_pin(pin).map_err(map_err("QUARANTINE"))?;
    let map = aya::maps::Map::from_map_data(data).map_err(map_err("QUARANTINE"))?;
    let q: HashMap<_, u64, u8> = HashMap::try_from(map).map_err(map_err("QUARANTINE"))?;
    Ok(q.keys().flatten().collect())
}
