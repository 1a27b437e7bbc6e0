//! Per-cgroup budgets of routine records: a pod that connects or sends as
//! fast as it can fills at most its own share of the ring buffer, so that
//! the execs and policy hits of every other pod still fit. Over budget, a
//! record is counted in its cgroup's entry instead of sent; the daemon
//! reports the count with the pod. The arithmetic is a generic cell rate
//! (one timestamp per cgroup); updates from two CPUs at once may lose a
//! count, which a budget can afford.
use aya_ebpf::{macros::map, maps::LruHashMap};
use sensor_common::{Budget, BUDGET_BURST, BUDGET_RATE};

/// Nanoseconds between records at the budget's rate.
const INTERVAL: u64 = 1_000_000_000 / BUDGET_RATE;
/// How far ahead of now a cgroup's budget may run: its burst.
const TOLERANCE: u64 = INTERVAL * BUDGET_BURST;

/// Cgroup id → its budget. LRU: a cgroup that went quiet leaves room.
#[map]
pub static BUDGETS: LruHashMap<u64, Budget> = LruHashMap::with_max_entries(4096, 0);

/// Whether cgroup `id` may send one more routine record at `now`.
#[inline(always)]
pub fn allow(id: u64, now: u64) -> bool {
    let Some(b) = BUDGETS.get_ptr_mut(&id) else {
        let fresh = Budget {
            tat: now + INTERVAL,
            suppressed: 0,
        };
        let _ = BUDGETS.insert(&id, &fresh, 0);
        return true;
    };
    // SAFETY: the map's value for this key; a concurrent update from
    // another CPU can only lose a count.
    let b = unsafe { &mut *b };
    let tat = if b.tat > now { b.tat } else { now };
    if tat - now > TOLERANCE {
        b.suppressed += 1;
        return false;
    }
    b.tat = tat + INTERVAL;
    true
}
