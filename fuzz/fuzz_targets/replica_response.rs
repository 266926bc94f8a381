//! The replica client's response parser (head, then the body as a streamed body is decoded) on
//! arbitrary bytes: no panic, no body longer than what followed the head.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    berth_gateway::fuzzing::check_response(data);
});
