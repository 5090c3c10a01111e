//! Server-sent events framing, as the WHATWG HTML standard defines it (§9.2
//! "Server-sent events", event stream interpretation): lines end with CRLF,
//! LF or a lone CR; a blank line dispatches the event; `data` fields are
//! joined with LF; a line starting with `:` is a comment; one space after
//! the colon is dropped. Servers built on sse-starlette (vLLM's siblings,
//! many Python servers) end lines with CRLF; OpenAI and vLLM with LF.
//!
//! Written here rather than taken from a crate: the crates that parse SSE
//! consume the bytes, while the gateway must pass every byte through
//! untouched (or drop exactly one event's bytes), so it needs each event's
//! raw extent next to its parsed data.

use bytes::{Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any.
    pub name: Option<String>,
    /// The `data:` fields joined with LF.
    pub data: String,
    /// The event's bytes exactly as received (empty when it was longer
    /// than the parser keeps, see [`SseParser::new`]).
    pub raw: Bytes,
}

/// Splits a byte stream into events.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes not yet split into lines.
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no line end.
    scanned: usize,
    /// The raw bytes of the event being assembled.
    raw: BytesMut,
    /// The event's bytes were shed (handed on early): no longer kept.
    raw_shed: bool,
    /// Bytes of a shed event, to be handed on as they come.
    passthrough: BytesMut,
    /// The line in progress was shed: its rest is not parsed.
    skip_line: bool,
    name: Option<String>,
    data: String,
    /// The event's data grew past `max_event`: not kept.
    data_dropped: bool,
    max_event: usize,
}

impl SseParser {
    /// A parser that keeps at most about `max_event` bytes of one event.
    pub fn new(max_event: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            raw: BytesMut::new(),
            raw_shed: false,
            passthrough: BytesMut::new(),
            skip_line: false,
            name: None,
            data: String::new(),
            data_dropped: false,
            max_event,
        }
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(data);
        let mut events = Vec::new();
        while let Some(line_end) = self.next_line_end(false) {
            self.take_line(line_end, &mut events);
        }
        events
    }

    /// The stream ended: a final CR ends its line, and an event without
    /// its blank line is dispatched (browsers drop it; the gateway still
    /// reads its usage, and hands its raw bytes back).
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(line_end) = self.next_line_end(true) {
            self.take_line(line_end, &mut events);
        }
        if !self.buf.is_empty() {
            let rest = self.buf.split();
            self.push_raw(&rest);
            if !self.skip_line {
                self.field(&rest);
            }
        }
        let raw = std::mem::take(&mut self.raw).freeze();
        if !self.data.is_empty() || self.name.is_some() || !raw.is_empty() {
            events.push(Event {
                name: self.name.take(),
                data: std::mem::take(&mut self.data),
                raw,
            });
        }
        events
    }

    /// How many bytes of the event in progress are held.
    pub fn held(&self) -> usize {
        self.raw.len() + self.buf.len()
    }

    /// Gives up holding the event in progress: returns its bytes so far
    /// (for the caller to pass on) and keeps none of it from now on, so an
    /// upstream that never ends an event or a line cannot grow memory.
    pub fn shed(&mut self) -> Bytes {
        let mut out = std::mem::take(&mut self.raw);
        out.extend_from_slice(&self.buf);
        self.raw_shed = true;
        if !self.buf.is_empty() {
            // The rest of this line is not parsed: it is not data the
            // gateway can judge any more.
            self.skip_line = true;
            self.buf.clear();
            self.scanned = 0;
        }
        out.freeze()
    }

    /// (position of the terminator, its length), if a whole line is there.
    fn next_line_end(&mut self, at_end: bool) -> Option<(usize, usize)> {
        let from = self.scanned.min(self.buf.len());
        let found = self.buf[from..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
            .map(|p| p + from);
        let Some(pos) = found else {
            self.scanned = self.buf.len();
            return None;
        };
        if self.buf[pos] == b'\n' {
            return Some((pos, 1));
        }
        match self.buf.get(pos + 1) {
            Some(b'\n') => Some((pos, 2)),
            Some(_) => Some((pos, 1)),
            // A CR at the end: CRLF or a lone CR, known with the next byte.
            None if at_end => Some((pos, 1)),
            None => {
                self.scanned = pos;
                None
            }
        }
    }

    fn take_line(&mut self, (pos, len): (usize, usize), events: &mut Vec<Event>) {
        let line = self.buf.split_to(pos + len);
        self.scanned = 0;
        self.push_raw(&line);
        if std::mem::take(&mut self.skip_line) {
            return; // the end of a shed line, not a blank one
        }
        let content = &line[..pos];
        if !content.is_empty() {
            self.field(content);
            return;
        }
        // A blank line always ends an event: its raw bytes hold the blank
        // line at least (or went to the passthrough, when the event was
        // shed), and a comment-only event is the client's too.
        let raw = std::mem::take(&mut self.raw).freeze();
        self.raw_shed = false;
        self.data_dropped = false;
        events.push(Event {
            name: self.name.take(),
            data: std::mem::take(&mut self.data),
            raw,
        });
    }

    fn push_raw(&mut self, bytes: &[u8]) {
        if self.raw_shed {
            self.passthrough.extend_from_slice(bytes);
        } else {
            self.raw.extend_from_slice(bytes);
        }
    }

    /// Bytes of a shed event that arrived since the last call: they come
    /// before the raw bytes of any event returned by the same feed.
    pub fn take_passthrough(&mut self) -> Bytes {
        std::mem::take(&mut self.passthrough).freeze()
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return; // a comment
        }
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data_dropped || self.data.len() + value.len() > self.max_event {
                    self.data_dropped = true;
                    self.data.clear();
                    return;
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"event" => self.name = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
}

/// Strips the trailing LF `data` joining leaves, per the standard.
pub fn payload(event: &Event) -> &str {
    event.data.strip_suffix('\n').unwrap_or(&event.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.feed(c));
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn lf_crlf_and_cr_frame_the_same_events_whatever_the_chunking() {
        for eol in ["\n", "\r\n", "\r"] {
            let first = format!("event: a{eol}data: one{eol}data:two{eol}{eol}");
            let second = format!(": comment{eol}data: three{eol}{eol}");
            let stream = format!("{first}{second}");
            // Every split point, including between CR and LF.
            for cut in 0..=stream.len() {
                let (x, y) = stream.as_bytes().split_at(cut);
                let events = parse_all(&[x, y]);
                assert_eq!(events.len(), 2, "{eol:?} cut {cut}: {events:?}");
                assert_eq!(events[0].name.as_deref(), Some("a"));
                assert_eq!(payload(&events[0]), "one\ntwo");
                assert_eq!(payload(&events[1]), "three");
                assert_eq!(events[0].raw, first.as_bytes(), "{eol:?} cut {cut}");
                assert_eq!(events[1].raw, second.as_bytes(), "{eol:?} cut {cut}");
            }
        }
    }

    #[test]
    fn an_event_without_its_blank_line_is_still_read_at_the_end() {
        let events = parse_all(&[b"data: {\"usage\":1}\r"]);
        assert_eq!(events.len(), 1);
        assert_eq!(payload(&events[0]), "{\"usage\":1}");
        assert_eq!(events[0].raw, &b"data: {\"usage\":1}\r"[..]);
    }

    #[test]
    fn what_a_stream_ends_on_is_handed_back_whatever_it_is() {
        // A comment with no data and no name: no usage in it, but its
        // bytes are the client's and must not be lost.
        for tail in [&b": keep-alive"[..], b": keep-alive\n", b"retry: 10"] {
            let events = parse_all(&[b"data: 1\n\n", tail]);
            assert_eq!(events.len(), 2, "{events:?}");
            assert_eq!((events[1].name.as_deref(), payload(&events[1])), (None, ""));
            assert_eq!(events[1].raw, tail);
        }
        let named = parse_all(&[b"event: done"]);
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].name.as_deref(), Some("done"));
        assert_eq!(
            parse_all(&[b"data: 1\n\n"]).len(),
            1,
            "nothing after the blank line"
        );
    }

    #[test]
    fn after_a_shed_an_unterminated_events_data_is_still_read_at_the_end() {
        // The held bytes were handed on by `shed`, so the event has no raw
        // bytes left; its data (the usage, say) is still read.
        let mut p = SseParser::new(1024);
        assert!(p.feed(b"data: a\n").is_empty());
        assert_eq!(p.shed(), &b"data: a\n"[..]);
        assert!(p.feed(b"data: {\"usage\":1}").is_empty());
        let events = p.finish();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(payload(&events[0]), "a\n{\"usage\":1}");
        assert!(events[0].raw.is_empty());
        assert_eq!(p.take_passthrough(), &b"data: {\"usage\":1}"[..]);
    }

    #[test]
    fn a_comment_only_event_is_handed_back_whole() {
        let events = parse_all(&[b": ping\n\ndata: 1\n\n"]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!((events[0].name.as_deref(), payload(&events[0])), (None, ""));
        assert_eq!(events[0].raw, &b": ping\n\n"[..]);
        assert_eq!(payload(&events[1]), "1");
    }

    #[test]
    fn data_past_the_bound_is_dropped_for_the_whole_event() {
        let parse = |stream: &[u8]| {
            let mut p = SseParser::new(10);
            let mut events = p.feed(stream);
            events.extend(p.finish());
            events
        };
        // Exactly the bound is kept; one byte more drops the event's data,
        // and what follows in the same event is dropped too. The next event
        // starts afresh.
        let kept = parse(b"data: 0123456789\n\n");
        assert_eq!(payload(&kept[0]), "0123456789");
        let dropped = parse(b"data: 01234567890\ndata: a\n\ndata: b\n\n");
        assert_eq!(payload(&dropped[0]), "");
        assert_eq!(dropped[0].raw, &b"data: 01234567890\ndata: a\n\n"[..]);
        assert_eq!(payload(&dropped[1]), "b");
        // Lines are joined with their LF, which counts.
        let joined = parse(b"data: 01234\ndata: 56789\n\n");
        assert_eq!(payload(&joined[0]), "");
        let joined = parse(b"data: 01234\ndata: 5678\n\n");
        assert_eq!(payload(&joined[0]), "01234\n5678");
    }

    #[test]
    fn a_shed_endless_line_does_not_grow_memory_and_the_next_event_parses() {
        let mut p = SseParser::new(1024);
        let mut passed = 0;
        for _ in 0..1000 {
            assert!(p.feed(&[b'x'; 1000]).is_empty());
            passed += p.take_passthrough().len();
            if p.held() > 1024 {
                passed += p.shed().len();
            }
            assert!(p.held() <= 2048);
        }
        assert_eq!(passed, 1000 * 1000);
        let events = p.feed(b"\n\ndata: next\n\n");
        assert_eq!(&p.take_passthrough()[..], b"\n\n", "the shed event's end");
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(payload(&events[1]), "next");
    }
}
