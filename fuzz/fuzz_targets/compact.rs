//! `sensor compact`: any JSON line is an event to print or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = serde_json::from_str::<sensor::export::Envelope>(line) {
        let _ = sensor::export::compact::line(&e);
    }
});
