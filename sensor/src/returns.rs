//! Syscall records whose hooks wait for the return (`return: true`),
//! held by thread until the kernel's return record says which of their
//! selectors passed `matchReturnArgs`; joined, they become the events.
//! A thread has at most one syscall in flight, so the thread id is the
//! key; a record whose return never comes (the thread exited, or the
//! record was lost) is evicted, oldest first, once too many are held.
use std::collections::{HashMap, VecDeque};

use sensor_common::SyscallReturn;

use crate::decode::SyscallRecord;

/// Records held at most: each can carry 8 KiB of user memory, and one
/// whose return is on its way waits for a single drain of the ring.
const MAX_HELD: usize = 1024;

#[derive(Default)]
pub struct Returns {
    held: HashMap<u32, SyscallRecord>,
    /// Thread ids in arrival order (with stale ones, skipped on eviction).
    order: VecDeque<u32>,
}

impl Returns {
    /// Holds `r`, whose `returning` hits wait for the return.
    pub fn hold(&mut self, r: SyscallRecord) {
        let tid = r.header.tid;
        if self.held.insert(tid, r).is_none() {
            self.order.push_back(tid);
        }
        while self.held.len() > MAX_HELD {
            match self.order.pop_front() {
                Some(old) => {
                    self.held.remove(&old);
                }
                None => break,
            }
        }
        if self.order.len() > 2 * MAX_HELD {
            self.order.retain(|t| self.held.contains_key(t));
        }
    }

    /// The held record of `ret`'s thread, with the return value and, as
    /// its hits, the waiting selectors that passed; `None` when none did
    /// or nothing was held.
    pub fn join(&mut self, ret: &SyscallReturn) -> Option<SyscallRecord> {
        let mut r = self.held.remove(&ret.tid)?;
        r.header.hits = ret.hits & r.header.returning;
        r.ret = Some(ret.ret);
        (r.header.hits != 0).then_some(r)
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::SyscallEvent;

    fn record(tid: u32, returning: u64) -> SyscallRecord {
        // SAFETY: plain integers; all zero is a valid record.
        let mut header: SyscallEvent = unsafe { std::mem::zeroed() };
        header.tid = tid;
        header.hits = returning | 1;
        header.returning = returning;
        SyscallRecord {
            header,
            user: Default::default(),
            ret: None,
        }
    }

    fn ret(tid: u32, hits: u64, value: i64) -> SyscallReturn {
        SyscallReturn {
            tid,
            hits,
            ret: value as u64,
            ..Default::default()
        }
    }

    #[test]
    fn a_return_joins_its_thread_record_with_the_selectors_that_passed() {
        let mut h = Returns::default();
        h.hold(record(7, 0b110));
        assert!(h.join(&ret(8, 0b110, 3)).is_none(), "another thread");
        let r = h.join(&ret(7, 0b010, 3)).unwrap();
        assert_eq!((r.header.hits, r.ret), (0b010, Some(3)));
        assert_eq!(h.len(), 0);
        // None passed: nothing to post, and nothing held.
        h.hold(record(7, 0b110));
        assert!(h.join(&ret(7, 0, -2)).is_none());
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn records_whose_return_never_comes_are_evicted_oldest_first() {
        let mut h = Returns::default();
        for tid in 0..MAX_HELD as u32 + 10 {
            h.hold(record(tid, 2));
        }
        assert_eq!(h.len(), MAX_HELD);
        assert!(h.join(&ret(0, 2, 0)).is_none(), "the oldest went");
        assert!(h.join(&ret(MAX_HELD as u32 + 9, 2, 0)).is_some());
    }
}
