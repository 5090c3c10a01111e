//! The delegation chain of a token: RFC 8693 §4.1 `act`, read strictly.
//!
//! `act` is an object naming the current actor by a string `sub`, and may
//! hold the `act` of whom that actor acted for, and so on. Anything else (an
//! array, a string, `null`, an object without a string `sub`) is refused,
//! never read as "no actor": a malformed delegation must not pass for a
//! person acting directly. A chain deeper than [`MAX_ACTORS`] is refused too,
//! never cut short, so an actor cannot hide behind eight others.

use serde_json::{Map, Value};

use super::MappingError;

/// The longest actor chain accepted.
pub const MAX_ACTORS: usize = 8;

/// The actor chain, current actor first; empty when the token has no `act`.
pub(crate) fn chain(claims: &Map<String, Value>) -> Result<Vec<String>, MappingError> {
    let mut chain = Vec::new();
    let mut act = claims.get("act");
    while let Some(value) = act {
        let Value::Object(actor) = value else {
            return Err(MappingError::InvalidActor);
        };
        let Some(Value::String(sub)) = actor.get("sub") else {
            return Err(MappingError::InvalidActor);
        };
        if sub.is_empty() {
            return Err(MappingError::InvalidActor);
        }
        if chain.len() == MAX_ACTORS {
            return Err(MappingError::TooManyActors);
        }
        chain.push(sub.clone());
        act = actor.get("act");
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn of(claims: Value) -> Result<Vec<String>, MappingError> {
        chain(claims.as_object().unwrap())
    }

    fn nested(depth: usize) -> Value {
        let mut act = json!({"sub": format!("agent-{depth}")});
        for i in (1..depth).rev() {
            act = json!({"sub": format!("agent-{i}"), "act": act});
        }
        json!({"sub": "alice", "act": act})
    }

    #[test]
    fn the_current_actor_comes_first() {
        let claims =
            json!({"sub": "alice", "act": {"sub": "summariser", "act": {"sub": "planner"}}});
        assert_eq!(of(claims).unwrap(), ["summariser", "planner"]);
        assert_eq!(of(json!({"sub": "alice"})).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn every_malformed_act_is_refused_never_read_as_no_actor() {
        for bad in [
            json!({"act": ["summariser"]}),
            json!({"act": "summariser"}),
            json!({"act": null}),
            json!({"act": 7}),
            json!({"act": {}}),
            json!({"act": {"sub": 7}}),
            json!({"act": {"sub": ""}}),
            json!({"act": {"sub": ["x"]}}),
            json!({"act": {"client_id": "summariser"}}),
            json!({"act": {"sub": "summariser", "act": "planner"}}),
            json!({"act": {"sub": "summariser", "act": {"sub": null}}}),
            json!({"act": {"sub": "summariser", "act": [{"sub": "planner"}]}}),
        ] {
            assert_eq!(of(bad.clone()), Err(MappingError::InvalidActor), "{bad}");
        }
    }

    #[test]
    fn a_chain_past_the_limit_is_refused_not_cut() {
        assert_eq!(of(nested(MAX_ACTORS)).unwrap().len(), MAX_ACTORS);
        assert_eq!(of(nested(MAX_ACTORS + 1)), Err(MappingError::TooManyActors));
        assert_eq!(of(nested(40)), Err(MappingError::TooManyActors));
    }
}
