//! Ring-buffer records: whatever bytes the kernel (or a bug in it) hands
//! over decode into a record or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sensor::decode::decode(data);
});
