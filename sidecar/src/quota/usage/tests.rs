//! Each answer shape, as the engines write it (the wire formats of the
//! OpenAI, Anthropic, vLLM and Ollama APIs), streamed and not, split at
//! awkward places.

use super::*;

fn run(meter: &mut UsageMeter, chunks: &[&str]) -> (String, Usage) {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&meter.feed(Bytes::from(c.to_string())));
    }
    let (tail, usage) = meter.finish();
    out.extend_from_slice(&tail);
    (String::from_utf8(out).unwrap(), usage)
}

fn exact(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt,
        completion,
        estimated: false,
    }
}

/// Splits `text` into chunks of `n` bytes (at char boundaries).
fn chunked(text: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if current.len() >= n {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn meter_all(shape: Shape, text: &str, sizes: &[usize]) -> Vec<Usage> {
    sizes
        .iter()
        .map(|n| {
            let mut m = UsageMeter::new(shape, false, 7);
            let chunks = chunked(text, *n);
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (out, usage) = run(&mut m, &refs);
            assert_eq!(out, text, "passed through unchanged");
            usage
        })
        .collect()
}

#[test]
fn ollama_streams_report_the_final_counts_even_when_split_mid_line() {
    let stream = [
        "{\"done\":false,\"message\":{\"content\":\"he\"}}\n{\"done\":fa",
        "lse,\"message\":{\"content\":\"llo\"}}\n",
        "{\"done\":true,\"prompt_eval_count\":26,\"eval_count\":",
        "298}\n",
    ];
    let mut m = UsageMeter::new(Shape::NdJson, false, 0);
    let (out, usage) = run(&mut m, &stream);
    assert_eq!(out, stream.concat(), "passed through unchanged");
    assert_eq!(usage, exact(26, 298));
}

#[test]
fn every_non_streamed_shape() {
    let cases = [
        // Ollama chat / generate.
        (
            r#"{"model":"m","done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":7}"#,
            exact(5, 7),
        ),
        // Ollama /api/embed: no `done`.
        (
            r#"{"model":"m","embeddings":[[0.1,0.2]],"total_duration":1,"load_duration":1,"prompt_eval_count":9}"#,
            exact(9, 0),
        ),
        // OpenAI chat completions.
        (
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            exact(3, 4),
        ),
        // OpenAI embeddings.
        (
            r#"{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
            exact(8, 0),
        ),
        // vLLM rerank: only total_tokens.
        (
            r#"{"id":"rerank-1","model":"m","usage":{"total_tokens":21},"results":[{"index":0,"relevance_score":0.9}]}"#,
            exact(21, 0),
        ),
        // vLLM score / pooling.
        (
            r#"{"object":"list","data":[{"score":0.5}],"usage":{"prompt_tokens":12,"total_tokens":12,"completion_tokens":0}}"#,
            exact(12, 0),
        ),
        // OpenAI Responses API.
        (
            r#"{"id":"resp_1","object":"response","status":"completed","output":[],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#,
            exact(36, 87),
        ),
        // Anthropic Messages, with prompt caching.
        (
            r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":20,"output_tokens":6}}"#,
            exact(35, 6),
        ),
    ];
    for (body, expected) in cases {
        for usage in meter_all(Shape::Json, body, &[1, 7, body.len()]) {
            assert_eq!(usage, expected, "{body}");
        }
    }
}

#[test]
fn a_json_answer_over_a_mebibyte_is_metered_without_keeping_it() {
    let vector = "0.123456789,".repeat(300_000);
    for (body, expected) in [
        (
            format!(
                r#"{{"object":"list","data":[{{"embedding":[{vector}0.1]}}],"usage":{{"prompt_tokens":4096,"total_tokens":4096}}}}"#
            ),
            exact(4096, 0),
        ),
        (
            format!(
                r#"{{"model":"m","embeddings":[[{vector}0.1]],"total_duration":1,"prompt_eval_count":512}}"#
            ),
            exact(512, 0),
        ),
        (
            format!(
                r#"{{"choices":[{{"message":{{"content":"{}"}}}}],"usage":{{"prompt_tokens":1,"completion_tokens":300000}}}}"#,
                "\\\"usage\\\": {\\\"prompt_tokens\\\": 99} ".repeat(100_000)
            ),
            exact(1, 300_000),
        ),
    ] {
        assert!(body.len() > 2 * MAX_WHOLE_BYTES);
        let mut m = UsageMeter::new(Shape::Json, false, 0);
        let mut held = 0;
        for chunk in body.as_bytes().chunks(16 * 1024) {
            m.feed(Bytes::copy_from_slice(chunk));
            held = held.max(m.pending.len() + m.tail.len());
        }
        assert!(held <= MAX_WHOLE_BYTES + 3 * EDGE_BYTES, "held {held}");
        assert_eq!(m.finish().1, expected);
    }
}

#[test]
fn an_answer_without_usage_is_the_prompt_estimate_plus_one_per_chunk() {
    let mut m = UsageMeter::new(Shape::NdJson, false, 40);
    let (_, u) = run(&mut m, &["{\"done\":false}\n", "{\"done\":false}\n"]);
    assert_eq!(
        u,
        Usage {
            prompt: 40,
            completion: 2,
            estimated: true
        }
    );
    let mut m = UsageMeter::new(Shape::Json, false, 40);
    let (_, u) = run(&mut m, &["{\"embedding\":[0.1]}"]);
    assert_eq!(u.total(), 40, "legacy /api/embeddings: the prompt");
}

#[test]
fn an_all_zero_usage_is_no_count_and_the_answer_is_charged_the_estimate() {
    // Ollama 0.17's OpenAI routes, when its runner stops a repeating model
    // before the end: zeros, no finish reason.
    let whole = r#"{"choices":[{"message":{"content":"More More"},"finish_reason":null}],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#;
    let mut m = UsageMeter::new(Shape::Json, false, 40);
    let (_, u) = run(&mut m, &[whole]);
    assert!(u.estimated && u.total() >= 40, "{u:?}");
    // A completion stream: zeros in each chunk, then the real count...
    let zeros = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}}\n\n";
    let real = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":2,\"total_tokens\":21}}\n\n";
    let mut m = UsageMeter::new(Shape::Sse, false, 40);
    let (_, u) = run(&mut m, &[zeros, zeros, real, "data: [DONE]\n\n"]);
    assert_eq!(u, exact(19, 2));
    // ...or, cut short, only the zeros: an estimate, never free.
    let mut m = UsageMeter::new(Shape::Sse, false, 40);
    let (_, u) = run(&mut m, &[zeros, zeros]);
    assert_eq!(
        u,
        Usage {
            prompt: 40,
            completion: 2,
            estimated: true
        }
    );
    // Ollama's native final object with zero counts: the same.
    let mut m = UsageMeter::new(Shape::NdJson, false, 40);
    let (_, u) = run(
        &mut m,
        &["{\"done\":true,\"prompt_eval_count\":0,\"eval_count\":0}\n"],
    );
    assert!(u.estimated, "{u:?}");
}

const SSE: [&str; 4] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\nda",
    "ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2}}\n\n",
    "data: [DONE]\n\n",
];

#[test]
fn the_added_usage_event_is_removed_and_every_other_byte_kept_with_every_line_ending() {
    for eol in ["\n", "\r\n", "\r"] {
        let stream: Vec<String> = SSE.iter().map(|c| c.replace('\n', eol)).collect();
        let whole = stream.concat();
        for size in [1, 2, 3, 5, 64, whole.len()] {
            let mut m = UsageMeter::new(Shape::Sse, true, 0);
            let chunks = chunked(&whole, size);
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (out, usage) = run(&mut m, &refs);
            let expected = [SSE[0], &SSE[1][..SSE[1].len() - 2], SSE[3]]
                .concat()
                .replace('\n', eol);
            assert_eq!(out, expected, "{eol:?} / {size}");
            assert_eq!(usage, exact(11, 2), "{eol:?} / {size}");
        }
    }
}

#[test]
fn crlf_events_are_metered_as_they_come_not_at_the_end() {
    // sse-starlette frames with CRLF: each event must be seen when it
    // completes (the old parser waited for "\n\n" and saw none).
    let mut m = UsageMeter::new(Shape::Sse, false, 0);
    m.feed(Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n",
    ));
    m.feed(Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\r\n\r\n",
    ));
    assert_eq!(m.chunks, 2, "both events read before the stream ended");
    // The client leaves here: prompt estimate 0 + 2 chunks.
    assert_eq!(m.usage().total(), 2);
}

#[test]
fn a_usage_event_the_client_asked_for_is_kept() {
    let mut m = UsageMeter::new(Shape::Sse, false, 0);
    let (out, usage) = run(&mut m, &SSE);
    assert_eq!(out, SSE.concat());
    assert_eq!(usage.total(), 13);
}

#[test]
fn responses_api_stream_reads_response_completed() {
    let stream = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"delta\":\"Hi\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":12,\"output_tokens\":30,\"total_tokens\":42}}}\n\n",
    );
    for usage in meter_all(Shape::Sse, stream, &[1, 9, stream.len()]) {
        assert_eq!(usage, exact(12, 30));
    }
}

#[test]
fn anthropic_stream_merges_message_start_and_message_delta() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    for usage in meter_all(Shape::Sse, stream, &[1, 13, stream.len()]) {
        assert_eq!(usage, exact(25, 15));
    }
}

#[test]
fn an_anthropic_stream_cut_after_message_start_charges_its_input() {
    let mut m = UsageMeter::new(Shape::Sse, false, 3);
    m.feed(Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n"));
    assert_eq!(m.usage(), exact(25, 1));
}

#[test]
fn vllm_continuous_usage_stats_keep_the_last_count() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    let mut m = UsageMeter::new(Shape::Sse, true, 0);
    let (out, usage) = run(&mut m, &[stream]);
    assert_eq!(out, stream, "events with choices are never dropped");
    assert_eq!(usage, exact(5, 2));
}

#[test]
fn an_sse_event_that_never_ends_is_passed_on_and_memory_stays_bounded() {
    let mut m = UsageMeter::new(Shape::Sse, true, 0);
    let mut passed = 0;
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    passed += m.feed(Bytes::from_static(b"data: ")).len();
    for _ in 0..64 {
        passed += m.feed(chunk.clone()).len();
        assert!(m.sse.held() <= MAX_EVENT_BYTES + chunk.len());
    }
    passed += m.finish().0.len();
    assert_eq!(
        passed,
        6 + 64 * chunk.len(),
        "every byte reaches the client"
    );
}

#[test]
fn an_ndjson_line_that_never_ends_does_not_grow_memory() {
    let mut m = UsageMeter::new(Shape::NdJson, false, 0);
    for _ in 0..64 {
        m.feed(Bytes::from(vec![b'x'; 64 * 1024]));
        assert!(m.pending.len() <= MAX_EVENT_BYTES);
    }
    m.feed(Bytes::from_static(
        b"\n{\"done\":true,\"prompt_eval_count\":1,\"eval_count\":2}\n",
    ));
    assert_eq!(m.finish().1, exact(1, 2));
}

/// `{"a":"<before>","usage":{...},"b":"<after>"}` with fillers of these
/// sizes around the usage.
fn usage_between(before: usize, after: usize) -> String {
    format!(
        r#"{{"a":"{}","usage":{{"prompt_tokens":3,"completion_tokens":4}},"b":"{}"}}"#,
        "x".repeat(before),
        "y".repeat(after)
    )
}

/// Meters `body` as one JSON answer arriving in chunks of `size` (or, with
/// `size` 0, in a chunk of 100 bytes and then the rest at once).
fn meter_json(body: &str, size: usize) -> Usage {
    let mut m = UsageMeter::new(Shape::Json, false, 99);
    let bytes = body.as_bytes();
    let chunks: Vec<&[u8]> = if size == 0 {
        vec![&bytes[..100], &bytes[100..]]
    } else {
        bytes.chunks(size).collect()
    };
    for chunk in chunks {
        m.feed(Bytes::copy_from_slice(chunk));
    }
    m.finish().1
}

#[test]
fn an_answer_up_to_a_mebibyte_is_read_whole_wherever_its_usage_is() {
    // The usage sits more than EDGE_BYTES from either end: only reading the
    // whole answer finds it.
    let body = usage_between(300 * 1024, 300 * 1024);
    assert!(body.len() < MAX_WHOLE_BYTES);
    for size in [body.len(), 0, 100 * 1024, 4096] {
        assert_eq!(meter_json(&body, size), exact(3, 4), "chunks of {size}");
    }
}

#[test]
fn past_a_mebibyte_the_usage_is_read_from_the_first_and_last_64_kib() {
    let big = MAX_WHOLE_BYTES + 200 * 1024;
    for (body, expected) in [
        // Near the end, near the start: found, whole or in any chunking
        // (one chunk over the bound at once included).
        (usage_between(big, 10 * 1024), exact(3, 4)),
        (usage_between(10 * 1024, big), exact(3, 4)),
        // Further in than the edges (the tail keeps the last EDGE_BYTES at
        // least, twice that at most): not kept, so the estimate.
        (
            usage_between(big, 3 * EDGE_BYTES),
            Usage {
                prompt: 99,
                completion: 0,
                estimated: true,
            },
        ),
    ] {
        for size in [body.len(), 0, 10_000, 64 * 1024] {
            assert_eq!(meter_json(&body, size), expected, "chunks of {size}");
        }
    }
}

#[test]
fn the_kept_tail_of_a_large_answer_stays_within_two_edges() {
    let body = usage_between(3 * MAX_WHOLE_BYTES, 100);
    let mut m = UsageMeter::new(Shape::Json, false, 0);
    // Chunks that never add up to exactly two edges.
    for chunk in body.as_bytes().chunks(10_000) {
        m.feed(Bytes::copy_from_slice(chunk));
        assert!(m.tail.len() <= 2 * EDGE_BYTES, "tail {}", m.tail.len());
    }
    assert_eq!(m.finish().1, exact(3, 4));
    // The head is the first EDGE_BYTES exactly, however the answer came.
    for first in [100, EDGE_BYTES + 100, MAX_WHOLE_BYTES - 1] {
        let mut m = UsageMeter::new(Shape::Json, false, 0);
        m.feed(Bytes::copy_from_slice(&body.as_bytes()[..first]));
        m.feed(Bytes::copy_from_slice(&body.as_bytes()[first..]));
        assert_eq!(m.pending.len(), EDGE_BYTES, "first chunk {first}");
        assert_eq!(&m.pending[..], &body.as_bytes()[..EDGE_BYTES]);
        assert!(m.tail.len() <= 2 * EDGE_BYTES);
    }
}

#[test]
fn a_large_answer_is_charged_its_last_usage_key_even_with_space_before_the_colon() {
    // A nested "usage" object early in the tail, and the answer's own last,
    // written with whitespace before its colon.
    let body = format!(
        r#"{{"a":"{}","choices":[{{"usage":{{"prompt_tokens":1,"completion_tokens":1}}}}],"usage" :  {{"prompt_tokens":6,"completion_tokens":9}}}}"#,
        "x".repeat(MAX_WHOLE_BYTES + 1024)
    );
    for size in [body.len(), 8192] {
        assert_eq!(meter_json(&body, size), exact(6, 9), "chunks of {size}");
    }
}

#[test]
fn a_total_above_prompt_and_completion_is_charged_as_prompt() {
    let body = r#"{"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":10}}"#;
    assert_eq!(meter_json(body, body.len()), exact(8, 2));
}

#[test]
fn counts_are_whole_non_negative_numbers_integral_floats_included() {
    let body = r#"{"usage":{"prompt_tokens":5.0,"completion_tokens":2.0}}"#;
    assert_eq!(meter_json(body, body.len()), exact(5, 2));
    // A negative or fractional prompt count is no count: the prompt is
    // estimated, the completion taken.
    for prompt in ["-3.0", "2.5", "-1"] {
        let body = format!(r#"{{"usage":{{"prompt_tokens":{prompt},"completion_tokens":4}}}}"#);
        assert_eq!(
            meter_json(&body, body.len()),
            Usage {
                prompt: 99,
                completion: 4,
                estimated: true
            },
            "{prompt}"
        );
    }
}

#[test]
fn an_ollama_chunk_that_is_not_done_reports_nothing_whatever_it_carries() {
    let mut m = UsageMeter::new(Shape::NdJson, false, 11);
    let (_, usage) = run(
        &mut m,
        &[
            "{\"done\":false,\"prompt_eval_count\":5,\"eval_count\":1}\n",
            "{\"done\":false}\n",
        ],
    );
    assert_eq!(
        usage,
        Usage {
            prompt: 11,
            completion: 2,
            estimated: true
        }
    );
}

#[test]
fn an_ollama_stream_whose_last_line_has_no_newline_is_still_read() {
    let mut m = UsageMeter::new(Shape::NdJson, false, 0);
    let last = "{\"done\":true,\"prompt_eval_count\":3,\"eval_count\":4}";
    let (out, usage) = run(&mut m, &["{\"done\":false}\n", last]);
    assert_eq!(out, format!("{{\"done\":false}}\n{last}"));
    assert_eq!(usage, exact(3, 4));
}

/// `{"done":true,...,"pad":"..."}` of exactly `len` bytes.
fn ollama_final_line(len: usize) -> String {
    let head = r#"{"done":true,"prompt_eval_count":5,"eval_count":2,"pad":""#;
    let fill = len - head.len() - 2;
    format!("{head}{}\"}}", "p".repeat(fill))
}

#[test]
fn an_ollama_line_up_to_the_event_bound_is_read_and_one_past_it_is_not() {
    // A long final line (Ollama's `/api/generate` writes its whole `context`
    // there) is read.
    let long = ollama_final_line(200 * 1024);
    let mut m = UsageMeter::new(Shape::NdJson, false, 0);
    let (_, usage) = run(&mut m, &[&long, "\n"]);
    assert_eq!(usage, exact(5, 2), "a 200 KiB line");
    let line = ollama_final_line(MAX_EVENT_BYTES);
    assert_eq!(line.len(), MAX_EVENT_BYTES);
    let mut m = UsageMeter::new(Shape::NdJson, false, 0);
    let (_, usage) = run(&mut m, &[&line, "\n"]);
    assert_eq!(usage, exact(5, 2), "exactly at the bound");
    let longer = ollama_final_line(MAX_EVENT_BYTES + 1);
    let mut m = UsageMeter::new(Shape::NdJson, false, 0);
    let (_, usage) = run(&mut m, &[&longer, "\n"]);
    assert!(usage.estimated, "past the bound: {usage:?}");
}

#[test]
fn an_sse_event_up_to_the_event_bound_is_read_whether_stripping_or_not() {
    let head =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2},\"pad\":\"";
    let first = format!("{head}{}", "p".repeat(MAX_EVENT_BYTES - head.len()));
    assert_eq!(first.len(), MAX_EVENT_BYTES);
    for strip in [false, true] {
        let mut m = UsageMeter::new(Shape::Sse, strip, 0);
        let (_, usage) = run(&mut m, &[&first, "\"}\n\n", "data: [DONE]\n\n"]);
        assert_eq!(usage, exact(5, 2), "strip: {strip}");
    }
}

#[test]
fn without_stripping_sse_bytes_go_out_as_they_come_and_exactly_once() {
    let mut m = UsageMeter::new(Shape::Sse, false, 0);
    assert_eq!(
        m.feed(Bytes::from_static(b"data: {\"cho")),
        Bytes::from_static(b"data: {\"cho"),
        "half an event is not held back"
    );
    // A stream that ends without the last event's blank line.
    let stream = [
        "ices\":[{\"delta\":{}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
    ];
    let (out, usage) = run(&mut m, &stream);
    assert_eq!(out, stream.concat(), "nothing twice");
    assert_eq!(usage, exact(1, 2));
}

#[test]
fn the_done_marker_and_empty_events_are_not_chunks_of_the_answer() {
    let mut m = UsageMeter::new(Shape::Sse, false, 7);
    let (_, usage) = run(
        &mut m,
        &["data: {\"choices\":[{}]}\n\ndata:\n\ndata: {\"choices\":[{}]}\n\ndata: [DONE]\n\n"],
    );
    assert_eq!(
        usage,
        Usage {
            prompt: 7,
            completion: 2,
            estimated: true
        }
    );
}
