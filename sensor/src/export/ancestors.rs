//! Tetragon's `--enable-ancestors`: which event kinds carry `ancestors`, the
//! process's lineage beyond its parent. `base` (exec and exit) must be on
//! for any other kind to be, as in Tetragon.
use std::str::FromStr;

/// The kinds Tetragon's flag names; `uprobe`, `usdt` and `loader` are
/// accepted (a Tetragon configuration loads) but this sensor emits no such
/// events.
const KNOWN: &[&str] = &[
    "base",
    "kprobe",
    "tracepoint",
    "lsm",
    "uprobe",
    "usdt",
    "loader",
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AncestorKinds {
    pub base: bool,
    pub kprobe: bool,
    pub tracepoint: bool,
    pub lsm: bool,
    /// Kinds this sensor has no events of, kept for the filters' check.
    pub uprobe: bool,
    pub usdt: bool,
    pub loader: bool,
}

impl AncestorKinds {
    /// Whether events of Tetragon's `EventType` number `t` carry ancestors.
    pub fn enabled_for(&self, t: i32) -> bool {
        match t {
            1 | 5 => self.base,
            9 => self.kprobe,
            10 => self.tracepoint,
            11 => self.loader,
            12 => self.uprobe,
            28 => self.lsm,
            29 => self.usdt,
            _ => false,
        }
    }
}

/// The event types that can carry ancestors, Tetragon's numbers: what an
/// `ancestor_binary_regex` filter without `event_set` covers.
pub const WITH_ANCESTORS: &[i32] = &[1, 5, 9, 10, 11, 12, 28, 29];

impl FromStr for AncestorKinds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(w) = words.iter().find(|w| !KNOWN.contains(w)) {
            return Err(format!(
                "unknown event type {w:?} (one of: {})",
                KNOWN.join(", ")
            ));
        }
        let has = |k: &str| words.contains(&k);
        if !has("base") {
            return Ok(AncestorKinds::default());
        }
        Ok(AncestorKinds {
            base: true,
            kprobe: has("kprobe"),
            tracepoint: has("tracepoint"),
            lsm: has("lsm"),
            uprobe: has("uprobe"),
            usdt: has("usdt"),
            loader: has("loader"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_count_only_with_base() {
        let k: AncestorKinds = "base,kprobe".parse().unwrap();
        assert!(k.base && k.kprobe && !k.tracepoint && !k.lsm);
        let k: AncestorKinds = "kprobe,lsm".parse().unwrap();
        assert_eq!(k, AncestorKinds::default());
        assert_eq!(
            "".parse::<AncestorKinds>().unwrap(),
            AncestorKinds::default()
        );
        let k: AncestorKinds = " base , uprobe ".parse().unwrap();
        assert!(k.base && !k.kprobe && k.uprobe);
        assert!(k.enabled_for(1) && k.enabled_for(5) && k.enabled_for(12));
        assert!(!k.enabled_for(9) && !k.enabled_for(27));
    }

    #[test]
    fn an_unknown_kind_is_refused_with_the_known_ones() {
        let e = "base,kprobes".parse::<AncestorKinds>().unwrap_err();
        assert!(e.contains("\"kprobes\"") && e.contains("tracepoint"), "{e}");
    }
}
