//! The listener's request-head parser (the short lane's `httparse` wrapper) on arbitrary bytes:
//! no panic, and every header span it reports lies inside the head.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    berth_server::front::check_parse(data);
});
