//! Brain rules: any YAML parses into a rule or a field error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_yaml::from_slice::<sensor::brain::rule::RawRule>(data) else {
        return;
    };
    let _ = sensor::brain::rule::parse(raw);
});
