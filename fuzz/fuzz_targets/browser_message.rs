//! Arbitrary text into `relay::browser::ClientMessage::parse`: no panic, and exactly the documented messages accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::fuzzing::browser_message(data));
