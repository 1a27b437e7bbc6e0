//! Policy files: any text loads into policies and rules, or is refused with
//! an error; it never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sensor::documents::{load_text, Loaded, Vars};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut into = Loaded::default();
    let _ = load_text(
        std::path::Path::new("fuzz.yaml"),
        text,
        &Vars::new(),
        &mut into,
    );
});
