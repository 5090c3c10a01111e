#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Table tests of the MCP decision: messages read as every server reads
//! them, judged by rules over targets, lists trimmed in JSON and SSE.

use bytes::Bytes;
use serde_json::json;

use super::judge::{self, Denial};
use super::lists::{self, Lists};
use super::message::{self, Ask, ListKind, MessageError};
use crate::canonical::{Engine, canonical_name};
use crate::claims::{ClaimMapping, Identity};
use crate::policy::{DenyKind, EndpointClass, Policy, Rule, Subjects};

fn read(body: &str) -> Result<message::Judged, MessageError> {
    message::read(&Bytes::from(body.to_owned()), &[])
}

fn ask(body: &str) -> Ask {
    let judged = read(body).unwrap();
    assert_eq!(judged.messages.len(), 1);
    judged.messages[0].ask.clone()
}

fn target(name: &str) -> Ask {
    Ask::Call(canonical_name(Engine::Mcp, name).unwrap())
}

#[test]
fn each_method_is_read_as_the_ask_it_is() {
    for (body, want) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            Ask::Session,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            Ask::Session,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#,
            Ask::Session,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            Ask::List(ListKind::Tools),
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/list"}"#,
            Ask::List(ListKind::Resources),
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/templates/list"}"#,
            Ask::List(ListKind::ResourceTemplates),
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"prompts/list"}"#,
            Ask::List(ListKind::Prompts),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}"#,
            target("tool:search"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"docs://readme"}}"#,
            target("resource:docs://readme"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"docs://a"}}"#,
            target("resource:docs://a"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"summarize"}}"#,
            target("prompt:summarize"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":"b"}}}"#,
            target("prompt:p"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"docs://{x}"},"argument":{"name":"x","value":"b"}}}"#,
            target("resource:docs://{x}"),
        ),
        (r#"{"jsonrpc":"2.0","id":9,"result":{}}"#, Ask::Answer),
        (
            r#"{"jsonrpc":"2.0","id":9,"error":{"code":-1,"message":"no"}}"#,
            Ask::Answer,
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"server/discover","params":{}}"#,
            Ask::Session,
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"tasks/list"}"#,
            Ask::Unknown,
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true}}}"#,
            Ask::Listen(Vec::new()),
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["docs://a","secrets://b"]}}}"#,
            Ask::Listen(vec![
                canonical_name(Engine::Mcp, "resource:docs://a").unwrap(),
                canonical_name(Engine::Mcp, "resource:secrets://b").unwrap(),
            ]),
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"Tools/Call","params":{"name":"x"}}"#,
            Ask::Unknown,
        ),
    ] {
        assert_eq!(ask(body), want, "{body}");
    }
}

/// What is missing or mistyped is named, and an answer's members are
/// spelt as every server reads them.
#[test]
fn refusals_name_the_member_and_answers_are_spelt_exactly() {
    for (body, member) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            "params.name",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":7}}"#,
            "params.uri",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":1}}}"#,
            "params.ref.type",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":["docs://a"]}}"#,
            "params.notifications.resourceSubscriptions",
        ),
    ] {
        let err = read(body).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{member} is missing or has the wrong type"),
            "{body}"
        );
    }
    // No subscriptions is a stream of notifications only.
    assert_eq!(
        ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":null}}}"#
        ),
        Ask::Listen(Vec::new())
    );
    let judged = read(r#"{"jsonrpc":"2.0","id":9,"Result":{"content":[]}}"#).unwrap();
    assert_eq!(judged.messages[0].ask, Ask::Answer);
    assert_eq!(
        std::str::from_utf8(&judged.bytes).unwrap(),
        r#"{"jsonrpc":"2.0","id":9,"result":{"content":[]}}"#
    );
}

#[test]
fn a_configured_session_method_needs_only_read() {
    let judged = message::read(
        &Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tasks/list"}"#),
        &["tasks/list".to_owned()],
    )
    .unwrap();
    assert_eq!(judged.messages[0].ask, Ask::Session);
}

/// What a Go server (encoding/json: case-insensitive, last key wins) and a
/// Python or TypeScript server (exact keys) would read differently is
/// refused or rewritten: the judged name is the only name any server sees.
#[test]
fn case_variant_and_duplicate_keys_are_refused_or_spelt_exactly() {
    for body in [
        // Two names: Go reads the last, Python the exact one.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","Name":"delete_all"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","NAME":"delete_all"}}"#,
        // U+017F LATIN SMALL LETTER LONG S folds to S for Go.
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"x\"},\"param\u{17f}\":{\"name\":\"y\"}}",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete_all"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list","params":{"name":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","Method":"tools/list","params":{"name":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"},"Params":{"name":"y"}}"#,
    ] {
        let err = read(body).unwrap_err();
        assert!(
            matches!(
                err,
                MessageError::KeyCollision { .. } | MessageError::Json(_)
            ),
            "{body}: {err:?}"
        );
    }
    // One key in another case: what Go reads, spelt as the others read it.
    let judged =
        read(r#"{"JSONRPC":"2.0","ID":1,"Method":"tools/call","Params":{"Name":"search"}}"#)
            .unwrap();
    assert_eq!(judged.messages[0].ask, target("tool:search"));
    assert_eq!(
        std::str::from_utf8(&judged.bytes).unwrap(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#
    );
    // Keys below `arguments` are the tool's data, kept exactly.
    let judged = read(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s","arguments":{"a":1,"A":2}}}"#).unwrap();
    assert!(
        std::str::from_utf8(&judged.bytes)
            .unwrap()
            .contains(r#"{"a":1,"A":2}"#)
    );
}

#[test]
fn malformed_messages_are_refused_with_their_reason() {
    for (body, code) in [
        ("[]", "batch_size"),
        ("42", "not_jsonrpc"),
        (r#"{"id":1,"method":"ping"}"#, "jsonrpc_version"),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            "jsonrpc_version",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            "bad_member",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1e3,"method":"ping"}"#,
            "bad_member",
        ),
        (
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            "bad_member",
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, "bad_member"),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            "bad_member",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            "bad_member",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
            "bad_target",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":" x"}}"#,
            "bad_target",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"x"}}"#,
            "bad_member",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/tool","name":"x"}}}"#,
            "bad_member",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            "not_jsonrpc",
        ),
        (r#"{"jsonrpc":"2.0","result":{}}"#, "not_jsonrpc"),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
            "duplicate_id",
        ),
        ("[1]", "not_jsonrpc"),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#,
            "invalid_json",
        ),
    ] {
        let err = read(body).unwrap_err();
        assert_eq!(err.code(), code, "{body}: {err:?}");
    }
    let many: Vec<String> = (0..=message::MAX_BATCH)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#))
        .collect();
    assert_eq!(
        read(&format!("[{}]", many.join(","))).unwrap_err().code(),
        "batch_size"
    );
    // One fewer is the largest batch, and it is read whole.
    let largest = read(&format!("[{}]", many[1..].join(","))).unwrap();
    assert_eq!(largest.messages.len(), message::MAX_BATCH);
}

fn who(claims: serde_json::Value) -> Identity {
    ClaimMapping::default()
        .resolve()
        .unwrap()
        .identity(claims.as_object().unwrap(), 0, &[])
        .unwrap()
        .identity
}

fn policy() -> Policy {
    use EndpointClass::*;
    let mut deploy = Rule::new(
        "deployers",
        Subjects {
            scopes: vec!["mcp:deploy".into()],
            ..Default::default()
        },
        &["tool:deploy*"],
        &[Inference, Read],
    );
    deploy.human_only = true;
    Policy::new(
        &[
            Rule::new(
                "staff-search",
                Subjects::groups(&["staff"]),
                &["tool:search*", "resource:docs://*", "prompt:summarize"],
                &[Inference, Read],
            ),
            deploy,
        ],
        false,
        Engine::Mcp,
    )
}

fn staff() -> Identity {
    who(json!({"iss": "https://idp", "sub": "bob", "groups": ["staff"], "azp": "cli"}))
}

fn judged(body: &str) -> Result<String, Denial> {
    judge::judge(&policy(), &staff(), &read(body).unwrap().messages)
}

#[test]
fn calls_are_judged_by_their_target_and_the_batch_only_whole() {
    let call = |name: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#)
    };
    assert_eq!(judged(&call("search_docs")).unwrap(), "staff-search");
    assert_eq!(
        judged(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap(),
        "staff-search"
    );
    assert_eq!(
        judged(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"docs://a"}}"#)
            .unwrap(),
        "staff-search"
    );
    // A tool the rules do not name; a resource outside the glob; a prompt.
    for body in [
        call("delete_all"),
        call("Search_docs"),
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"internal"}}"#.to_owned(),
    ] {
        let denial = judged(&body).unwrap_err();
        assert_eq!(denial.kind, DenyKind::Model, "{body}");
        assert!(denial.scopes.is_empty(), "{body}");
    }
    // A stream of updates of a resource the caller may not read is denied.
    let denial = judged(
        r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["docs://a","secrets://db"]}}}"#,
    )
    .unwrap_err();
    assert_eq!(denial.kind, DenyKind::Model);
    assert!(judged(r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["docs://a"]}}}"#).is_ok());
    // Unknown methods are denied.
    let denial =
        judged(r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#).unwrap_err();
    assert_eq!(denial.kind, DenyKind::UnknownEndpoint);
    // One denied message denies the batch, wherever it is.
    let batch = format!(
        r#"[{{"jsonrpc":"2.0","id":1,"method":"tools/list"}},{},{}]"#,
        call("search_docs").replace(r#""id":1"#, r#""id":2"#),
        call("delete_all").replace(r#""id":1"#, r#""id":3"#)
    );
    let denial = judged(&batch).unwrap_err();
    assert_eq!(denial.method.as_deref(), Some("tools/call"));
}

/// A batch is allowed under the rule of its first call (what its audit
/// line names), whatever rules allow the rest.
#[test]
fn a_batch_is_allowed_under_its_first_calls_rule() {
    let scoped = who(
        json!({"iss": "https://idp", "sub": "bob", "groups": ["staff"], "scope": "mcp:deploy"}),
    );
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"deploy_app"}},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search_docs"}}]"#;
    let rule = judge::judge(&policy(), &scoped, &read(batch).unwrap().messages).unwrap();
    assert_eq!(rule, "deployers");
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"}},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"deploy_app"}}]"#;
    let rule = judge::judge(&policy(), &scoped, &read(batch).unwrap().messages).unwrap();
    assert_eq!(rule, "staff-search");
}

#[test]
fn a_tool_that_needs_a_scope_is_refused_naming_it_and_never_to_an_agent() {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy_app"}}"#;
    let denial = judged(body).unwrap_err();
    assert_eq!(denial.scopes, ["mcp:deploy"]);
    // With the scope: allowed.
    let scoped = who(
        json!({"iss": "https://idp", "sub": "bob", "groups": ["staff"], "scope": "openid mcp:deploy"}),
    );
    assert_eq!(
        judge::judge(&policy(), &scoped, &read(body).unwrap().messages).unwrap(),
        "deployers"
    );
    // An agent acting for bob, with the scope: the rule is human-only, so
    // no scope would help and none is named.
    let agent = who(
        json!({"iss": "https://idp", "sub": "bob", "groups": ["staff"],
        "scope": "mcp:deploy", "act": {"sub": "agent-7"}}),
    );
    let denial = judge::judge(&policy(), &agent, &read(body).unwrap().messages).unwrap_err();
    assert!(denial.scopes.is_empty(), "{denial:?}");
}

fn keep_staff(target: &str) -> bool {
    policy().may_use(&staff(), target)
}

#[test]
fn list_answers_keep_only_what_the_caller_may_use() {
    let answer = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": "search_docs", "inputSchema": {}},
        {"name": "delete_all", "inputSchema": {}},
        {"name": "deploy_app"},
        {"name": ""},
        {"description": "no name"},
    ]}});
    let (out, seen) = lists::trim_json(
        answer.to_string().as_bytes(),
        &Lists::Single(ListKind::Tools),
        &keep_staff,
    )
    .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        out["result"]["tools"],
        json!([{"name": "search_docs", "inputSchema": {}}])
    );
    assert_eq!(
        seen,
        ["tool:search_docs", "tool:delete_all", "tool:deploy_app"]
    );

    let resources = json!({"jsonrpc": "2.0", "id": "r", "result": {
        "resources": [{"uri": "docs://a"}, {"uri": "file:///etc/passwd"}]}});
    let (out, _) = lists::trim_json(
        resources.to_string().as_bytes(),
        &Lists::Single(ListKind::Resources),
        &keep_staff,
    )
    .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["result"]["resources"], json!([{"uri": "docs://a"}]));

    // A batch: only the answer to the list request is trimmed.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "result": {"prompts": [{"name": "summarize"}, {"name": "internal"}]}},
        {"jsonrpc": "2.0", "id": 2, "result": {"prompts": [{"name": "internal"}]}},
    ]);
    let (out, _) = lists::trim_json(
        batch.to_string().as_bytes(),
        &Lists::ById(vec![(json!(1), ListKind::Prompts)]),
        &keep_staff,
    )
    .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out[0]["result"]["prompts"], json!([{"name": "summarize"}]));
    assert_eq!(out[1]["result"]["prompts"], json!([{"name": "internal"}]));
    // An answer that is not JSON is not passed on.
    assert!(lists::trim_json(b"<html>", &Lists::Single(ListKind::Tools), &keep_staff).is_err());
}

#[test]
fn sse_list_answers_are_trimmed_event_by_event_whatever_the_line_endings() {
    let data = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": "search_docs"}, {"name": "delete_all"}]}})
    .to_string();
    for eol in ["\n", "\r\n", "\r"] {
        let body = format!(
            ": keep-alive{eol}{eol}event: message{eol}id: 5{eol}data: {data}{eol}{eol}data: not json{eol}{eol}"
        );
        let (out, _) = lists::trim_sse(
            body.as_bytes(),
            &Lists::Single(ListKind::Tools),
            &keep_staff,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("delete_all"), "{eol:?}: {out}");
        assert!(out.contains("search_docs"), "{out}");
        assert!(out.contains("event: message\nid: 5\ndata: {"), "{out}");
        assert!(out.contains("data: not json\n\n"), "{out}");
        assert!(out.starts_with(": keep-alive\n\n"), "{out}");
    }
    // Data split over several lines is one message.
    let split = "data: {\"jsonrpc\":\"2.0\",\"id\":2,\ndata: \"result\":{\"tools\":[{\"name\":\"delete_all\"}]}}\n\n";
    let (out, _) = lists::trim_sse(
        split.as_bytes(),
        &Lists::Single(ListKind::Tools),
        &keep_staff,
    )
    .unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("delete_all"));
    // A bare `data` line is an empty data line (SSE): it joins the
    // message; `datafoo` is another field, kept as it came.
    let bare = "datafoo: 1\ndata\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"delete_all\"}]}}\n\n";
    let (out, _) = lists::trim_sse(
        bare.as_bytes(),
        &Lists::Single(ListKind::Tools),
        &keep_staff,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "datafoo: 1\ndata: {\"id\":2,\"jsonrpc\":\"2.0\",\"result\":{\"tools\":[]}}\n\n"
    );
    // An event the stream cut short stays unterminated.
    let cut = format!("data: {data}");
    let (out, _) =
        lists::trim_sse(cut.as_bytes(), &Lists::Single(ListKind::Tools), &keep_staff).unwrap();
    assert!(!String::from_utf8(out).unwrap().ends_with("\n\n"));
}

#[test]
fn header_values_are_decoded_as_the_protocol_encodes_them() {
    assert_eq!(
        super::decode_header_value("search").as_deref(),
        Some("search")
    );
    assert_eq!(
        super::decode_header_value("=?base64?c8OpYXJjaA==?=").as_deref(),
        Some("séarch")
    );
    assert_eq!(super::decode_header_value("=?base64?***?="), None);
}
