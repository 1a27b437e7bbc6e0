//! The policy tables, in two banks (`sensor_common::BANKS`): a new policy
//! set is written whole into the bank the programs do not read, then one
//! store to `BANK` switches them over. A program run sees the old set or
//! the new one, never a mix, and never neither; the old bank is emptied
//! once no program run can still be reading it. The enforcement scope (`SCOPE_CGROUPS`) is not banked: it is
//! added to before the switch and pruned after it.
use std::collections::HashSet;
use std::hash::Hash;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapError};
use aya::Pod;
use sensor_common::{
    net_ops, net_selector, str_selector, Config, ExecSelector, NetSelector, NetValueKey, SysNr,
    SysSelector, MAX_SELECTORS, NET_ADDR_KEY_LEN, STR_KEY_LEN, SYSCALL_NRS,
};

use super::{map_err, Kernel, LoadError};
use crate::policy::{Compiled, SysStrings};

const STR_MAPS: [&str; 2] = ["STR_PREFIX", "STR_POSTFIX"];
/// The syscall string filters' tries (their hash is `SYS_STR_EQUAL`).
const SYS_STR_MAPS: [&str; 2] = ["SYS_STR_PREFIX", "SYS_STR_POSTFIX"];

/// The bank a string key belongs to (bit 7 of its selector byte).
fn str_bank(k: &[u8]) -> u32 {
    (k[0] >> 7) as u32
}

/// The bank an address or value key's selector belongs to.
fn net_bank(selector: u8) -> u32 {
    (selector as usize / MAX_SELECTORS) as u32
}

/// Returns once every BPF program run that started before the call has
/// ended. Programs run inside RCU read-side sections (tracepoints, cgroup
/// hooks, LSM trampolines), and `membarrier(MEMBARRIER_CMD_GLOBAL)` waits
/// for an RCU grace period (`synchronize_rcu`). Where it is refused
/// (`nohz_full`), a wait far longer than any program run stands in.
/// A bank switched away from, and word that its grace period is over.
pub struct Retired {
    bank: u32,
    grace: std::sync::mpsc::Receiver<()>,
}

fn wait_for_program_runs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "membarrier; waiting 50 ms instead");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Kernel {
    /// The bank the programs read.
    pub fn bank(&self) -> Result<u32, LoadError> {
        let m: Array<_, u32> = Array::try_from(self.map("BANK")?).map_err(map_err("BANK"))?;
        Ok(m.get(&0, 0).map_err(map_err("BANK"))? & 1)
    }

    /// Puts compiled policy and the enforcement scope in force: written
    /// into the idle bank, switched to in one store, the old bank emptied.
    /// Runtime switches (quarantine, pod scopes, wakeups) carry over.
    pub fn apply(&mut self, c: &Compiled, scope: &[u64]) -> Result<(), LoadError> {
        // The idle bank may still await its grace period from the last
        // switch; then whatever an interrupted write left in it goes.
        self.settle(true)?;
        let active = self.bank()?;
        let next = 1 - active;
        self.clear_bank(next)?;
        let str_key = |k: &[u8; STR_KEY_LEN]| {
            let mut k = *k;
            k[0] = str_selector(k[0], next);
            k
        };
        let mut equal: HashMap<_, [u8; STR_KEY_LEN], u8> =
            HashMap::try_from(self.map_mut("STR_EQUAL")?).map_err(map_err("STR_EQUAL"))?;
        for k in &c.equal {
            equal
                .insert(str_key(k), 1, 0)
                .map_err(map_err("STR_EQUAL"))?;
        }
        for (name, entries) in STR_MAPS.into_iter().zip([&c.prefix, &c.postfix]) {
            let mut trie: LpmTrie<_, [u8; STR_KEY_LEN], u8> =
                LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (bits, k) in entries {
                trie.insert(&Key::new(*bits, str_key(k)), 1, 0)
                    .map_err(map_err(name))?;
            }
        }
        let mut addrs: LpmTrie<_, [u8; NET_ADDR_KEY_LEN], u8> =
            LpmTrie::try_from(self.map_mut("NET_ADDR")?).map_err(map_err("NET_ADDR"))?;
        for (bits, k) in &c.net_addrs {
            let mut k = *k;
            k[0] = net_selector(k[0], next);
            addrs
                .insert(&Key::new(*bits, k), 1, 0)
                .map_err(map_err("NET_ADDR"))?;
        }
        let mut values: HashMap<_, NetValueKey, u8> =
            HashMap::try_from(self.map_mut("NET_VALUE")?).map_err(map_err("NET_VALUE"))?;
        for k in &c.net_values {
            let k = NetValueKey {
                selector: net_selector(k.selector, next),
                ..*k
            };
            values.insert(k, 1, 0).map_err(map_err("NET_VALUE"))?;
        }
        let base = next * MAX_SELECTORS as u32;
        let mut sels: Array<_, ExecSelector> =
            Array::try_from(self.map_mut("EXEC_SELECTORS")?).map_err(map_err("EXEC_SELECTORS"))?;
        for (i, s) in c.selectors.iter().enumerate() {
            sels.set(base + i as u32, s, 0)
                .map_err(map_err("EXEC_SELECTORS"))?;
        }
        let mut nsels: Array<_, NetSelector> =
            Array::try_from(self.map_mut("NET_SELECTORS")?).map_err(map_err("NET_SELECTORS"))?;
        for (i, s) in c.net_selectors.iter().enumerate() {
            nsels
                .set(base + i as u32, s, 0)
                .map_err(map_err("NET_SELECTORS"))?;
        }
        let mut ssels: Array<_, SysSelector> =
            Array::try_from(self.map_mut("SYS_SELECTORS")?).map_err(map_err("SYS_SELECTORS"))?;
        for (i, s) in c.sys_selectors.iter().enumerate() {
            ssels
                .set(base + i as u32, s, 0)
                .map_err(map_err("SYS_SELECTORS"))?;
        }
        // Every number of the bank is written: an array keeps what the
        // bank's last set left.
        let mut nrs: Array<_, SysNr> =
            Array::try_from(self.map_mut("SYS_NRS")?).map_err(map_err("SYS_NRS"))?;
        for nr in 0..SYSCALL_NRS {
            let entry = c.sys_nrs.get(nr).copied().unwrap_or_default();
            nrs.set(next * SYSCALL_NRS as u32 + nr as u32, entry, 0)
                .map_err(map_err("SYS_NRS"))?;
        }
        let mut sys_equal: HashMap<_, [u8; STR_KEY_LEN], u64> =
            HashMap::try_from(self.map_mut("SYS_STR_EQUAL")?).map_err(map_err("SYS_STR_EQUAL"))?;
        for (k, mask) in &c.sys_strings.equal {
            sys_equal
                .insert(str_key(k), mask, 0)
                .map_err(map_err("SYS_STR_EQUAL"))?;
        }
        for (name, set) in SYS_STR_MAPS
            .into_iter()
            .zip([&c.sys_strings.prefix, &c.sys_strings.postfix])
        {
            let mut trie: LpmTrie<_, [u8; STR_KEY_LEN], u64> =
                LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (bits, k, mask) in SysStrings::closed(set) {
                trie.insert(&Key::new(bits, str_key(&k)), mask, 0)
                    .map_err(map_err(name))?;
            }
        }
        let scope: HashSet<u64> = scope.iter().copied().collect();
        self.add_hash("SCOPE_CGROUPS", &scope)?;

        let mut cfg: Array<_, Config> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
        let now = cfg.get(&active, 0).map_err(map_err("CONFIG"))?;
        let config = Config {
            scoped: !scope.is_empty() as u32,
            quarantine_active: now.quarantine_active,
            n_scopes: now.n_scopes,
            pod_wakeups: now.pod_wakeups,
            connect_records: now.connect_records,
            process_cred: now.process_cred,
            process_ns: now.process_ns,
            sensor_tgid: std::process::id(),
            bank: next,
            ..c.config
        };
        cfg.set(next, config, 0).map_err(map_err("CONFIG"))?;
        let mut bank: Array<_, u32> =
            Array::try_from(self.map_mut("BANK")?).map_err(map_err("BANK"))?;
        bank.set(0, next, 0).map_err(map_err("BANK"))?;

        // A program run that read the old bank just before the switch may
        // still be reading it: it is emptied once every such run is over,
        // which a thread waits for so that the daemon's loop does not.
        let (done, grace) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            wait_for_program_runs();
            let _ = done.send(());
        });
        self.retired = Some(Retired {
            bank: active,
            grace,
        });
        self.prune_hash::<u64, u8>("SCOPE_CGROUPS", |id| scope.contains(id))?;
        let net = |class: u16| c.config.net_ops & class as u32 != 0;
        self.syscall_program(c.config.n_sys_selectors != 0 || net(net_ops::SEND))?;
        self.on_demand(super::OnDemand::SysExit, c.sys_returns())?;
        // Packet hooks need the TCP owners the state program keeps.
        self.on_demand(
            super::OnDemand::SockState,
            net(net_ops::LISTEN
                | net_ops::STATE
                | net_ops::OPENREQ
                | net_ops::PACKET_IN
                | net_ops::PACKET_OUT),
        )?;
        self.on_demand(super::OnDemand::PacketIn, net(net_ops::PACKET_IN))?;
        self.on_demand(super::OnDemand::PacketOut, net(net_ops::PACKET_OUT))
    }

    /// Empties the bank switched away from once its grace period is over
    /// (`wait`: blocks for it). Called on the daemon's tick, and before a
    /// bank is written again.
    pub fn settle(&mut self, wait: bool) -> Result<(), LoadError> {
        let Some(r) = self.retired.take() else {
            return Ok(());
        };
        let over = if wait {
            r.grace.recv().is_ok()
        } else {
            match r.grace.try_recv() {
                Ok(()) => true,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    self.retired = Some(r);
                    return Ok(());
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => false,
            }
        };
        if !over {
            // The waiting thread died: wait here instead.
            wait_for_program_runs();
        }
        self.clear_bank(r.bank)
    }

    /// Removes every table entry of `bank`.
    fn clear_bank(&mut self, bank: u32) -> Result<(), LoadError> {
        self.prune_hash::<[u8; STR_KEY_LEN], u8>("STR_EQUAL", |k| str_bank(k) != bank)?;
        for name in STR_MAPS {
            self.prune_trie::<STR_KEY_LEN, u8>(name, |k| str_bank(k) != bank)?;
        }
        self.prune_hash::<[u8; STR_KEY_LEN], u64>("SYS_STR_EQUAL", |k| str_bank(k) != bank)?;
        for name in SYS_STR_MAPS {
            self.prune_trie::<STR_KEY_LEN, u64>(name, |k| str_bank(k) != bank)?;
        }
        self.prune_trie::<NET_ADDR_KEY_LEN, u8>("NET_ADDR", |k| net_bank(k[0]) != bank)?;
        self.prune_hash::<NetValueKey, u8>("NET_VALUE", |k| net_bank(k.selector) != bank)
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

    /// Removes the keys of hash map `name` that `keep` refuses.
    fn prune_hash<K: Pod + Eq + Hash, V: Pod>(
        &mut self,
        name: &'static str,
        keep: impl Fn(&K) -> bool,
    ) -> Result<(), LoadError> {
        let mut m: HashMap<_, K, V> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let stale: Vec<K> = m.keys().flatten().filter(|k| !keep(k)).collect();
        for k in stale {
            match m.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }

    /// Removes the keys of LPM trie `name` whose data `keep` refuses.
    fn prune_trie<const N: usize, V: Pod>(
        &mut self,
        name: &'static str,
        keep: impl Fn(&[u8; N]) -> bool,
    ) -> Result<(), LoadError> {
        let mut trie: LpmTrie<_, [u8; N], V> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let stale: Vec<Key<[u8; N]>> = trie.keys().flatten().filter(|k| !keep(&k.data())).collect();
        for k in stale {
            match trie.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::NET_SELECTOR_BASE;

    #[test]
    fn every_key_names_its_bank() {
        for bank in 0..2 {
            for i in 0..MAX_SELECTORS as u8 {
                assert_eq!(str_bank(&[str_selector(i, bank)]), bank);
                assert_eq!(str_bank(&[str_selector(NET_SELECTOR_BASE + i, bank)]), bank);
                assert_eq!(net_bank(net_selector(i, bank)), bank);
            }
        }
        // Exec and connect string keys stay apart within a bank.
        assert_ne!(str_selector(3, 1), str_selector(NET_SELECTOR_BASE + 3, 1));
    }
}
