//! Building status conditions: the transition time moves only when the
//! status does, and two condition lists compare equal when only times differ.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What a controller concluded about one condition type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn ok(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: true,
            reason,
            message: message.into(),
        }
    }

    pub fn failed(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: false,
            reason,
            message: message.into(),
        }
    }

    /// The condition, keeping `previous`'s transition time when the status
    /// is unchanged.
    pub fn to_condition(
        &self,
        previous: &[Condition],
        generation: Option<i64>,
        now: &Time,
    ) -> Condition {
        let status = if self.ok { "True" } else { "False" };
        let last_transition_time = find(previous, self.type_)
            .filter(|p| p.status == status)
            .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
        Condition {
            type_: self.type_.to_owned(),
            status: status.to_owned(),
            reason: self.reason.to_owned(),
            // The API server caps messages at 32 KiB.
            message: self.message.chars().take(4096).collect(),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

/// The condition of `type_`, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Whether two lists say the same thing, transition times aside.
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let then = Time(Timestamp::from_second(1_000_000).unwrap());
        let now = Time(Timestamp::from_second(2_000_000).unwrap());
        let first = Verdict::failed("Ready", "Conflict", "x").to_condition(&[], Some(1), &then);
        assert_eq!(first.last_transition_time, then);
        let still = Verdict::failed("Ready", "SecretNotFound", "y").to_condition(
            std::slice::from_ref(&first),
            Some(2),
            &now,
        );
        assert_eq!(still.last_transition_time, then, "still False");
        assert!(!same(
            std::slice::from_ref(&first),
            std::slice::from_ref(&still)
        ));
        let flipped = Verdict::ok("Ready", "Ready", "z").to_condition(
            std::slice::from_ref(&still),
            Some(2),
            &now,
        );
        assert_eq!(flipped.last_transition_time, now);
        assert!(is_true(&[flipped], "Ready"));
    }
}
