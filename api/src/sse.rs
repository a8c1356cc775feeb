//! Server-Sent Events (`text/event-stream`) as `/v1/events/stream` sends them: a decoder for
//! clients, bounded in bytes, fed whatever pieces the connection delivers.
//!
//! The API sends one event per store event: `id:` its revision (a client resumes with
//! `Last-Event-ID`), `data:` the event as JSON on one line. Lines starting with `:` are
//! keep-alive comments.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last `id:` seen so far in the stream (it carries over, as the standard says).
    pub id: Option<String>,
    /// `event:`, if given (the API sends none: the type is `message`).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The stream broke the decoder's bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event stream line or event is longer than {limit} bytes")]
pub struct SseTooLong {
    /// The bound.
    pub limit: usize,
}

/// Decodes an event stream incrementally.
#[derive(Debug)]
pub struct SseDecoder {
    limit: usize,
    line: Vec<u8>,
    /// A `\r` ended the last line: a `\n` right after it belongs to it.
    after_cr: bool,
    last_id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// A decoder that refuses a line or an event longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            line: Vec::new(),
            after_cr: false,
            last_id: None,
            event: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// Feeds bytes; returns the events they complete.
    ///
    /// # Errors
    /// A line or an event longer than the limit (the stream should be dropped).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseTooLong> {
        let mut out = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line)? {
                        out.push(event);
                    }
                }
                _ if self.line.len() >= self.limit => return Err(SseTooLong { limit: self.limit }),
                _ => self.line.push(b),
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseTooLong> {
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return Ok(None);
            }
            return Ok(Some(SseEvent { id: self.last_id.clone(), event, data }));
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*text, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(SseTooLong { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // An id with NUL is ignored, as the standard says.
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(input: &[u8]) -> Vec<SseEvent> {
        SseDecoder::new(1024).push(input).unwrap()
    }

    #[test]
    fn events_carry_the_last_id_and_joined_data() {
        let got = all(b": keep-alive\n\nid: 7\ndata: {\"a\":1}\n\ndata: x\ndata:y\nevent: note\n\n");
        assert_eq!(
            got,
            vec![
                SseEvent { id: Some("7".into()), event: None, data: "{\"a\":1}".into() },
                SseEvent { id: Some("7".into()), event: Some("note".into()), data: "x\ny".into() },
            ]
        );
    }

    #[test]
    fn every_line_ending_counts_and_an_unfinished_event_waits() {
        let got = all(b"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\rdata: c\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].id.as_deref(), Some("2"));
        assert_eq!(got[1].data, "b");
    }

    #[test]
    fn a_line_or_event_over_the_limit_is_refused() {
        let mut d = SseDecoder::new(16);
        assert_eq!(d.push(&[b'x'; 17]), Err(SseTooLong { limit: 16 }));
        let mut d = SseDecoder::new(16);
        assert!(d.push(b"data: 0123456789\ndata: 0123456789\n").is_err());
    }

    proptest! {
        /// However the connection cuts the bytes, the same events come out.
        #[test]
        fn pieces_decode_as_the_whole(events in proptest::collection::vec(("[0-9]{1,4}", "[ -~]{0,20}"), 0..8), cut in 0usize..200) {
            let mut text = String::new();
            for (id, data) in &events {
                text.push_str(&format!("id: {id}\ndata: {data}\n\n: ping\n\n"));
            }
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            let mut d = SseDecoder::new(1024);
            let mut got = d.push(&bytes[..cut]).unwrap();
            got.extend(d.push(&bytes[cut..]).unwrap());
            prop_assert_eq!(got.len(), events.len());
            for (g, (id, data)) in got.iter().zip(&events) {
                prop_assert_eq!(g.id.as_deref(), Some(id.as_str()));
                prop_assert_eq!(&g.data, data);
            }
        }
    }
}
