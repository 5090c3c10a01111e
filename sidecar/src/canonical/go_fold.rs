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

use super::json::KeyRules;

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

/// Go's key matching, for [`super::json::parse_with`]: keys that fold alike
/// are one field, at every level Go decodes into a struct.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoFold;

impl KeyRules for GoFold {
    fn same_field(&self, a: &str, b: &str) -> bool {
        fold_eq(a, b)
    }

    fn folded(&self, key: &str) -> String {
        fold(key)
    }

    fn holds_data(&self, key: &str) -> bool {
        MAP_VALUED.iter().any(|field| matches(key, field))
    }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::canonical::json::{JsonError, parse_with};

    /// The two keys that collide, if any.
    fn collision(text: &str) -> Option<(String, String)> {
        match parse_with(&Bytes::copy_from_slice(text.as_bytes()), Some(&GoFold)) {
            Ok(_) => None,
            Err(JsonError::KeyCollision { first, second }) => Some((first, second)),
            Err(e) => panic!("{text}: {e}"),
        }
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
        // A rune past ASCII is never cut to its low byte: U+014D would be `M`.
        assert!(!matches("\u{14D}odel", "model"));
        assert!(!matches("\u{14D}ODEL", "model"));
        assert_eq!(fold("\u{17F}tream"), "STREAM");
        assert_eq!(fold("max_to\u{212A}ens"), "MAX_TOKENS");
        assert_eq!(fold("\u{14D}odel"), "\u{14D}ODEL");
    }

    #[test]
    fn case_variants_collide_at_struct_levels() {
        assert_eq!(
            collision(r#"{"model":"a","MODEL":"b"}"#),
            Some(("model".into(), "MODEL".into()))
        );
        // Large objects too.
        let mut many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        many.push_str("\"K3\":0");
        assert_eq!(
            collision(&format!("{{{many}}}")),
            Some(("k3".into(), "K3".into()))
        );
        assert!(collision(r#"{"stream":true,"\u017ftream":false}"#).is_some());
        assert!(collision(r#"{"max_tokens":1,"max_to\u212aens":9}"#).is_some());
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
