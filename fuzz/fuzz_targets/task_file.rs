//! Arbitrary text as a task file (`x.batch`, `x.workorder`) and as a systemd-style command
//! line: parsing returns a task or an error naming the file and line, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for file in ["x.batch", "x.workorder"] {
        if let Err(e) = drover_api::unit::parse_unit(file, text) {
            assert!(e.field.starts_with(file), "{e}");
        }
    }
    let _ = drover_api::unit::split_command(text);
});
