//! JWKS parsing and key vetting: `identity::KeySet::parse` on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::identity::KeySet;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = KeySet::parse(data) {
        // Every kept key must be reachable by its kid and allow some algorithm.
        for key in keys.all() {
            assert!(!key.algorithms.is_empty(), "a kept key allows no algorithm");
            if let Some(kid) = &key.kid {
                assert!(
                    !keys.by_kid(kid).is_empty(),
                    "a kept key is not found by its kid"
                );
            }
        }
    }
});
