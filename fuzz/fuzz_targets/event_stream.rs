//! Arbitrary bytes as a Server-Sent Events stream, cut at an arbitrary point: the decoder
//! returns events or refuses an over-long line, never panics, and cutting changes nothing.
#![no_main]

use drover_api::sse::SseDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let whole = SseDecoder::new(256).push(bytes);
    let mut pieces = SseDecoder::new(256);
    let at = usize::from(cut).min(bytes.len());
    let split = pieces.push(&bytes[..at]).and_then(|mut first| {
        first.extend(pieces.push(&bytes[at..])?);
        Ok(first)
    });
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b);
    }
});
