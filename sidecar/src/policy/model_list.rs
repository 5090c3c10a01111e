//! Trimming model lists to what the caller may use.

use serde_json::Value;

/// Keeps the models `allowed` says yes to, in Ollama's `/api/tags`
/// (`models[].name`) or OpenAI's `/v1/models` (`data[].id`) shape. A kept
/// entry's `parent` (vLLM names a LoRA adapter's base model there) is
/// cleared when the caller may not use that model. Returns `None` when the
/// document has neither shape (it is then not forwarded).
pub fn filter_models(body: &[u8], allowed: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    let (list, key) = if doc.get("models").is_some_and(Value::is_array) {
        ("models", "name")
    } else if doc.get("data").is_some_and(Value::is_array) {
        ("data", "id")
    } else {
        return None;
    };
    let items = doc.get_mut(list)?.as_array_mut()?;
    items.retain(|item| {
        let name = item
            .get(key)
            .or_else(|| item.get("model"))
            .and_then(Value::as_str);
        name.is_some_and(&allowed)
    });
    for item in items.iter_mut() {
        if let Some(parent) = item.get_mut("parent")
            && parent.as_str().is_some_and(|p| !allowed(p))
        {
            *parent = Value::Null;
        }
    }
    serde_json::to_vec(&doc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_both_list_shapes() {
        let ollama = br#"{"models":[{"name":"big:70b"},{"name":"small:1b"}]}"#;
        let out = filter_models(ollama, |m| m.ends_with(":1b")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"models":[{"name":"small:1b"}]}"#
        );
        let openai = br#"{"object":"list","data":[{"id":"big:70b"},{"id":"small:1b"}]}"#;
        let out: Value =
            serde_json::from_slice(&filter_models(openai, |m| m == "big:70b").unwrap()).unwrap();
        assert_eq!(out["data"], serde_json::json!([{"id": "big:70b"}]));
        assert_eq!(filter_models(b"[]", |_| true), None);
        // A LoRA adapter the caller may use does not name a base it may not.
        let vllm = br#"{"data":[{"id":"base","parent":null},{"id":"lora","parent":"base"}]}"#;
        let out: Value =
            serde_json::from_slice(&filter_models(vllm, |m| m == "lora").unwrap()).unwrap();
        assert_eq!(
            out["data"],
            serde_json::json!([{"id": "lora", "parent": null}])
        );
        let out: Value = serde_json::from_slice(&filter_models(vllm, |_| true).unwrap()).unwrap();
        assert_eq!(out["data"][1]["parent"], "base");
    }
}
