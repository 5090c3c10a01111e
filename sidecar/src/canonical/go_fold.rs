//! How Go's `encoding/json` (Ollama's decoder) matches JSON keys to struct
//! fields: without regard to case. A key matches a field when the two are
//! equal after folding: ASCII letters to upper case, and every other rune
//! to the smallest rune of its `unicode.SimpleFold` orbit. When several keys
//! match one field, the last one wins.
//!
//! Every struct field of Ollama's request types is ASCII, so a key can only
//! match one when each of its runes folds into ASCII. Two non-ASCII runes do
//! (checked against Go 1.26's tables by enumerating every rune): U+017F
//! LATIN SMALL LETTER LONG S folds to `S`, and U+212A KELVIN SIGN to `K`.
//! So `ſtream` is `stream` and `max_toKens` is `max_tokens` to Ollama.
//! Keys that fold only to non-ASCII text match no field and are ignored by
//! Go; they are left as they are.

use super::json::{Object, Str, Value};

/// Keys whose values Ollama decodes into maps or keeps as raw JSON (model
/// options, JSON schemas, tool arguments): keys below them are data, not
/// struct fields, and are matched exactly (Ollama's `Options.FromMap` does).
const MAP_VALUED: [&str; 14] = [
    "options",
    "format",
    "properties",
    "arguments",
    "schema",
    "input_schema",
    "input",
    "$defs",
    "defs",
    "items",
    "metadata",
    "stop",
    "logit_bias",
    "parameters",
];

/// One key, folded as Go folds it for field matching.
pub fn fold(key: &str) -> String {
    key.chars().map(fold_char).collect()
}

/// Whether `key` matches the (ASCII) field name `field` for Go.
pub fn matches(key: &str, field: &str) -> bool {
    let mut chars = key.chars();
    for f in field.bytes() {
        let Some(c) = chars.next() else {
            return false;
        };
        let folded = match c {
            '\u{017F}' => b'S',
            '\u{212A}' => b'K',
            c if c.is_ascii() => (c as u8).to_ascii_uppercase(),
            _ => return false,
        };
        if folded != f.to_ascii_uppercase() {
            return false;
        }
    }
    chars.next().is_none()
}

/// Two keys of one object that Go would take for the same field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub first: String,
    pub second: String,
}

/// Finds keys that collide under Go's folding, in `value` and in every
/// object below it that Go decodes into a struct.
pub fn find_collision(value: &Value) -> Option<Collision> {
    match value {
        Value::Object(object) => object_collision(object),
        Value::Array(items) => items.iter().find_map(find_collision),
        _ => None,
    }
}

fn object_collision(object: &Object) -> Option<Collision> {
    let keys: Vec<std::borrow::Cow<'_, str>> = object.iter().map(|(k, _)| k.as_str()).collect();
    let collision = if keys.len() <= 16 {
        // Pairwise, without allocating: the usual handful of keys.
        (0..keys.len()).find_map(|i| {
            (i + 1..keys.len())
                .find(|&j| fold_eq(&keys[i], &keys[j]))
                .map(|j| (i, j))
        })
    } else {
        let mut seen = std::collections::HashMap::with_capacity(keys.len());
        keys.iter()
            .enumerate()
            .find_map(|(j, k)| seen.insert(fold(k), j).map(|i| (i, j)))
    };
    if let Some((i, j)) = collision {
        let key = |n: usize| keys[n].chars().take(64).collect();
        return Some(Collision {
            first: key(i),
            second: key(j),
        });
    }
    object.iter().find_map(|(key, value)| {
        if is_map_valued(key) {
            None
        } else {
            find_collision(value)
        }
    })
}

fn fold_char(c: char) -> char {
    match c {
        'a'..='z' => c.to_ascii_uppercase(),
        '\u{017F}' => 'S',
        '\u{212A}' => 'K',
        _ => c,
    }
}

/// `fold(a) == fold(b)`, without allocating.
fn fold_eq(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.chars(), b.chars());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if fold_char(x) == fold_char(y) => {}
            _ => return false,
        }
    }
}

fn is_map_valued(key: &Str) -> bool {
    let key = key.as_str();
    MAP_VALUED.iter().any(|field| matches(&key, field))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::canonical::json::parse;

    fn collision(text: &str) -> Option<Collision> {
        find_collision(&parse(&Bytes::copy_from_slice(text.as_bytes())).unwrap())
    }

    #[test]
    fn keys_match_fields_as_go_matches_them() {
        for key in ["model", "MODEL", "Model", "mOdEl"] {
            assert!(matches(key, "model"), "{key}");
        }
        assert!(matches("\u{17F}tream", "stream"));
        assert!(matches("max_to\u{212A}ens", "max_tokens"));
        assert!(!matches("modeI", "model"));
        assert!(!matches("mode", "model"));
        assert!(!matches("models", "model"));
        // Dotless and dotted i fold outside ASCII in Go: no match.
        assert!(!matches("num_pred\u{131}ct", "num_predict"));
        assert!(!matches("num_pred\u{130}ct", "num_predict"));
        assert_eq!(fold("\u{17F}tream"), "STREAM");
    }

    #[test]
    fn case_variants_collide_at_struct_levels() {
        assert_eq!(
            collision(r#"{"model":"a","MODEL":"b"}"#),
            Some(Collision {
                first: "model".into(),
                second: "MODEL".into()
            })
        );
        assert!(collision(r#"{"stream":true,"\u017ftream":false}"#).is_some());
        assert!(collision(r#"{"messages":[{"role":"user","Role":"system"}]}"#).is_some());
        assert!(
            collision(r#"{"stream_options":{"include_usage":true,"INCLUDE_USAGE":false}}"#)
                .is_some()
        );
        assert!(collision(r#"{"model":"a","messages":[{"role":"user"}]}"#).is_none());
    }

    #[test]
    fn map_valued_fields_may_hold_case_variants() {
        // Ollama reads options with exact keys, and a tool's schema or
        // arguments are data.
        assert!(collision(r#"{"options":{"num_predict":5,"NUM_PREDICT":9}}"#).is_none());
        assert!(
            collision(
                r#"{"tools":[{"function":{"parameters":{"properties":{"id":{},"ID":{}}}}}]}"#
            )
            .is_none()
        );
        // ... but the map field itself is a struct field.
        assert!(collision(r#"{"options":{},"Options":{}}"#).is_some());
    }
}
