#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The PDF reader runs pdf-extract under `catch_unwind` and reports its panics as a
    // failure to read the file; libfuzzer-sys's panic hook would abort on them first.
    // With the default hook a caught panic is caught, and an uncaught one still aborts
    // (libfuzzer-sys catches it around this closure and aborts).
    static HOOK: Once = Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    overseer_fuzz::ingest(data);
});
