//! The SSE scanner (event re-alignment, event splitting, `data:` lines) on arbitrary bytes cut
//! into reads at each 0xFF byte: nothing lost or reordered, nothing held beyond its bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let chunks: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    berth_gateway::fuzzing::check_frames(&chunks);
});
