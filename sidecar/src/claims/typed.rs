//! Claims read by type. A claim whose value has a shape the IdP does not
//! document is never turned into names: groups `{"staff": false}` are not
//! the group `staff`, and a role list that holds an object is no role list.
//! The caller reports such a claim as ignored (a metric), and the identity
//! goes on without it.

use serde_json::Value;

/// What reading one claim gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read<T> {
    /// The claim is not in the token (or is `null`).
    Absent,
    /// The claim, read.
    Value(T),
    /// The claim is there, but not in a shape this field accepts.
    Ignored,
}

impl<T> Read<T> {
    pub(crate) fn from_option(
        value: Option<&Value>,
        read: impl FnOnce(&Value) -> Option<T>,
    ) -> Self {
        match value {
            None | Some(Value::Null) => Self::Absent,
            Some(v) => read(v).map_or(Self::Ignored, Self::Value),
        }
    }
}

/// One name: a string, or an integer (numeric ids in custom claims). Never
/// an element of a list or a key of an object.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// A list of names (groups, roles): an array of strings, and nothing else.
/// One element of another type spoils the whole list.
pub(crate) fn names(v: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = v else { return None };
    items
        .iter()
        .map(|item| item.as_str().map(str::to_owned))
        .collect()
}

/// Scopes: a space-separated string (RFC 8693 §4.2 `scope`, Entra `scp`) or
/// an array of strings (Okta `scp`).
pub(crate) fn scopes(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        other => names(other),
    }
}

/// A tenant: one name, or Descope's `tenants` object
/// (`{"<tenant id>": {"roles": [...], "permissions": [...]}}`) when it names
/// exactly one tenant. With several tenants and no `dct`, the token names no
/// single tenant: the claim is ignored rather than one picked.
pub(crate) fn tenant(v: &Value) -> Option<String> {
    match v {
        Value::Object(tenants) => {
            let mut entries = tenants.iter();
            match (entries.next(), entries.next()) {
                (Some((id, Value::Object(_))), None) => Some(id.clone()),
                _ => None,
            }
        }
        other => text(other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_are_arrays_of_strings_only() {
        assert_eq!(
            names(&json!(["a", "b"])),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(names(&json!([])), Some(vec![]));
        for bad in [
            json!({"staff": false}),
            json!({"staff": true}),
            json!([{"staff": "no"}]),
            json!(["staff", 1]),
            json!(["staff", null]),
            json!([["staff"]]),
            json!("staff"),
            json!(true),
            json!(7),
        ] {
            assert_eq!(names(&bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_strings_or_integers() {
        assert_eq!(text(&json!("alice")), Some("alice".into()));
        assert_eq!(text(&json!(7)), Some("7".into()));
        for bad in [
            json!(["alice"]),
            json!({"alice": 1}),
            json!(1.5),
            json!(true),
        ] {
            assert_eq!(text(&bad), None, "{bad}");
        }
    }

    #[test]
    fn scopes_are_a_string_or_a_list_of_strings() {
        assert_eq!(scopes(&json!("a b")), Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            scopes(&json!(["a", "b"])),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(scopes(&json!({"a": true})), None);
        assert_eq!(scopes(&json!([1])), None);
    }

    #[test]
    fn a_tenant_object_counts_only_with_exactly_one_documented_entry() {
        assert_eq!(tenant(&json!("acme")), Some("acme".into()));
        assert_eq!(
            tenant(&json!({"T1": {"roles": ["admin"], "permissions": []}})),
            Some("T1".into())
        );
        assert_eq!(tenant(&json!({"T1": {}, "T2": {}})), None, "ambiguous");
        assert_eq!(tenant(&json!({"T1": false})), None, "not Descope's shape");
        assert_eq!(tenant(&json!(["acme"])), None);
    }

    #[test]
    fn null_is_absent_and_a_wrong_shape_is_ignored() {
        assert_eq!(Read::from_option(None, names), Read::Absent);
        assert_eq!(Read::from_option(Some(&Value::Null), names), Read::Absent);
        assert_eq!(
            Read::from_option(Some(&json!({"x": 1})), names),
            Read::<Vec<String>>::Ignored
        );
    }
}
