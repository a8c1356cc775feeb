//! Feeds arbitrary bytes to the frame decoder, as a server reads them off a socket, and every
//! frame it yields to the payload decoder. Nothing may panic, no payload may exceed the limit,
//! and a frame that decodes must re-encode to the same bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ssntp::frame::{self, PREFIX_LEN};
use ssntp::Message;

/// A small maximum so the fuzzer reaches the "too large" path as well as real payloads.
const MAX_PAYLOAD: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // Split the input in two reads at a point chosen by the first byte, to exercise the
    // incremental path.
    let cut = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut buf = BytesMut::from(&data[..cut]);
    let mut consumed = 0;
    let mut fed_rest = false;
    loop {
        match frame::decode(&mut buf, MAX_PAYLOAD) {
            Ok(Some(f)) => {
                assert!(f.payload.len() <= MAX_PAYLOAD);
                let bytes = f.to_bytes();
                assert_eq!(bytes.len(), PREFIX_LEN + f.payload.len());
                // Re-encoding is exact except for the minor version, which is normalised.
                let start = consumed;
                consumed += bytes.len();
                let original = if start + bytes.len() <= data.len() { &data[start..start + bytes.len()] } else { &[][..] };
                if original.len() == bytes.len() {
                    assert_eq!(&original[2..], &bytes[2..]);
                }
                if let Ok(message) = Message::decode(&f) {
                    // A payload that decodes re-encodes to something that decodes the same.
                    let again = Message::decode(&message.to_frame(f.origin)).expect("re-encoded payload decodes");
                    assert_eq!(format!("{again:?}"), format!("{message:?}"));
                }
            }
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&data[cut..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
