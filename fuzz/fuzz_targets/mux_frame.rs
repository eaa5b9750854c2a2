//! Arbitrary bytes into `relay::mux::Frame::decode`: no panic, and an accepted frame round-trips through `encode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::fuzzing::mux_frame(data));
