//! The strings processes share. A node runs a few hundred distinct
//! binaries, working directories and flag sets across tens of thousands of
//! processes, so the cache holds each distinct one once.
use std::collections::HashSet;
use std::sync::Arc;

/// Below this size the set is not swept.
const MIN_SWEEP: usize = 1024;

#[derive(Default)]
pub struct Interner {
    set: HashSet<Arc<str>>,
    /// The size at which strings no process holds any more are dropped:
    /// twice the size the last sweep left, so a sweep's cost is spread over
    /// as many inserts as it scans.
    sweep_at: usize,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        if self.set.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = self.set.len() * 2;
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let mut i = Interner::default();
        let a = i.intern("/usr/bin/curl");
        let b = i.intern(&String::from("/usr/bin/curl"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn strings_no_process_holds_are_swept() {
        let mut i = Interner::default();
        let kept = i.intern("kept");
        for n in 0..10 * MIN_SWEEP {
            drop(i.intern(&format!("/tmp/{n}")));
        }
        assert!(i.len() <= 2 * MIN_SWEEP, "{} strings left", i.len());
        assert!(Arc::ptr_eq(&kept, &i.intern("kept")));
    }
}
