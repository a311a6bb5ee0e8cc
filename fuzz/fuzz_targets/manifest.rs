//! The manifest parser (a remote's manifest is untrusted input): never a panic, and a
//! manifest that parses survives a round trip through its own JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pronto_offsite::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_json(data, "fuzz") {
        let _ = m.sha256_bytes();
        let again = Manifest::from_json(&m.to_json(), "fuzz again").expect("round trip");
        assert_eq!(again.to_json(), m.to_json());
    }
});
