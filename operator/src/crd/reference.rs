//! The API reference in Markdown, generated from the CRDs' schemas (the doc
//! comments of the Rust types), so it cannot drift: a test compares it with
//! `docs/crd-reference.md`.

use std::fmt::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The reference for `crds`.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(
        "# attach.dev API reference\n\n\
         Generated from the CRD schemas by `cargo run -p attach-operator --bin crdgen -- --reference docs/crd-reference.md`; do not edit.\n",
    );
    for crd in crds {
        let names = &crd.spec.names;
        let Some(version) = crd.spec.versions.first() else {
            continue;
        };
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let _ = write!(
            out,
            "\n## {kind}\n\n`{group}/{version}`, {scope}; short names: {short}; `kubectl get {plural}`.\n\n{description}\n",
            kind = names.kind,
            group = crd.spec.group,
            version = version.name,
            scope = crd.spec.scope.to_lowercase(),
            short = names
                .short_names
                .as_ref()
                .map(|s| s
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            plural = names.plural,
            description = schema["description"].as_str().unwrap_or_default(),
        );
        for part in ["spec", "status"] {
            let _ = write!(
                out,
                "\n### {part}\n\n| field | type | description |\n|---|---|---|\n"
            );
            fields(&mut out, part, &schema["properties"][part]);
            rules(&mut out, part, &schema["properties"][part]);
        }
    }
    out
}

fn type_of(schema: &Value) -> String {
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return "integer or string".into();
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<_> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect();
        return format!("one of {}", values.join(", "));
    }
    match schema["type"].as_str() {
        Some("array") => format!("array of {}", type_of(&schema["items"])),
        Some(t) => t.to_owned(),
        None => "object".into(),
    }
}

fn fields(out: &mut String, path: &str, schema: &Value) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (name, prop) in props {
        let here = format!("{path}.{name}");
        let description = prop["description"]
            .as_str()
            .unwrap_or_default()
            .replace('\n', " ")
            .replace('|', "\\|");
        let req = if required.contains(&name.as_str()) {
            " (required)"
        } else {
            ""
        };
        let _ = writeln!(out, "| `{here}`{req} | {} | {description} |", type_of(prop));
        fields(out, &here, prop);
        if prop["type"] == "array" {
            fields(out, &format!("{here}[]"), &prop["items"]);
        }
    }
}

fn rules(out: &mut String, path: &str, schema: &Value) {
    let mut found = Vec::new();
    collect_rules(path, schema, &mut found);
    if found.is_empty() {
        return;
    }
    let _ = write!(out, "\nChecked by the API server:\n\n");
    for (at, message) in found {
        let _ = writeln!(out, "- `{at}`: {message}");
    }
}

fn collect_rules(path: &str, schema: &Value, found: &mut Vec<(String, String)>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(message) = rule["message"].as_str() {
            found.push((path.to_owned(), message.to_owned()));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, prop) in props {
            collect_rules(&format!("{path}.{name}"), prop, found);
        }
    }
    if schema["type"] == "array" {
        collect_rules(&format!("{path}[]"), &schema["items"], found);
    }
}
