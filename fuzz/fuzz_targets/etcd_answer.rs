//! Arbitrary bytes as an etcd gateway answer: whatever a member (or something pretending to be
//! one) sends, decoding a range or a transaction answer returns an error or a value, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = drover_etcd::client::decode_range(&value);
        let _ = drover_etcd::client::decode_txn(&value);
    }
});
