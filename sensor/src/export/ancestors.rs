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
}

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
        assert!(k.base && !k.kprobe);
    }

    #[test]
    fn an_unknown_kind_is_refused_with_the_known_ones() {
        let e = "base,kprobes".parse::<AncestorKinds>().unwrap_err();
        assert!(e.contains("\"kprobes\"") && e.contains("tracepoint"), "{e}");
    }
}
