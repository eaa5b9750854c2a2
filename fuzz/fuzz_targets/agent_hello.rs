//! Arbitrary text into the gateway's parse of the agent's hello (`serde_json::from_str::<relay::agent::Hello>`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::fuzzing::agent_hello(data));
