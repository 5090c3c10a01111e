//! Quota limits: how many LLM tokens, requests and concurrent requests a
//! user, group, tenant or client may use, overall or per model.

use serde::{Deserialize, Serialize};

use crate::canonical::{Engine, JudgedModel, ModelPattern};
use crate::claims::Identity;
use crate::policy::Subjects;

/// What a limit counts per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaKey {
    /// Each user has their own budget.
    #[default]
    User,
    /// Each group shares one budget among its members.
    Group,
    /// Each tenant shares one budget.
    Tenant,
    /// Each client (application) has its own budget.
    Client,
    /// Each agent (the current actor, or a machine client acting alone) has
    /// its own budget; requests with no agent are not counted here.
    Agent,
}

/// One limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaLimit {
    /// A name for 429 answers, audit lines and metrics.
    pub name: String,
    /// What the budget belongs to.
    #[serde(default)]
    pub per: QuotaKey,
    /// Who the limit applies to; everyone when absent. With `per: group`,
    /// the listed groups are the ones budgeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Subjects>,
    /// Model names or globs (read as rule patterns are); each matching model
    /// gets its own budget (models the backend does not serve share one,
    /// `(unlisted)`). Empty: one budget for all models.
    #[serde(default)]
    pub models: Vec<String>,
    /// LLM tokens (prompt + completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Requests in flight at once (streams count until they end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
    /// LLM tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

impl QuotaLimit {
    /// A limit named `name`, per user, for everyone and every model, that
    /// limits nothing yet: set the numbers with struct update syntax.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            per: QuotaKey::User,
            subjects: None,
            models: Vec::new(),
            tokens_per_minute: None,
            requests_per_minute: None,
            concurrent: None,
            tokens_per_day: None,
        }
    }

    /// The budget keys this limit gives `identity` for `model`: none if the
    /// limit does not apply. Every key names the issuer beside the owner, as
    /// names are unique only within their issuer: `<limit>|iss=<issuer>|
    /// <kind>=<name>[|model=<model>]`, with `%`, `|` and `=` in the issuer,
    /// the name and the model percent-encoded so that no two owners share a
    /// key.
    pub fn keys(
        &self,
        identity: &Identity,
        engine: Engine,
        model: Option<&JudgedModel>,
    ) -> Vec<String> {
        if let Some(subjects) = &self.subjects
            && !subjects.matches(identity)
        {
            return Vec::new();
        }
        let scope = if self.models.is_empty() {
            String::new()
        } else {
            match model {
                Some(m) if self.matches_model(engine, m) => {
                    format!("|model={}", key_part(m.label()))
                }
                _ => return Vec::new(),
            }
        };
        let owners: Vec<(&str, &str)> = match self.per {
            QuotaKey::User => vec![("user", identity.user.as_str())],
            QuotaKey::Tenant => identity
                .tenant
                .iter()
                .map(|t| ("tenant", t.as_str()))
                .collect(),
            QuotaKey::Client => identity
                .client
                .iter()
                .map(|c| ("client", c.as_str()))
                .collect(),
            QuotaKey::Agent => identity
                .current_agent()
                .map(|a| vec![("agent", a)])
                .unwrap_or_default(),
            QuotaKey::Group => identity
                .groups
                .iter()
                .filter(|g| {
                    self.subjects
                        .as_ref()
                        .is_none_or(|s| s.groups.is_empty() || s.groups.contains(g))
                })
                .map(|g| ("group", g.as_str()))
                .collect(),
        };
        let issuer = key_part(&identity.iss);
        owners
            .into_iter()
            .map(|(kind, owner)| {
                format!(
                    "{}|iss={issuer}|{kind}={}{scope}",
                    self.name,
                    key_part(owner)
                )
            })
            .collect()
    }

    /// Whether one of the limit's model patterns matches `model`'s
    /// canonical name.
    fn matches_model(&self, engine: Engine, model: &JudgedModel) -> bool {
        self.models
            .iter()
            .any(|p| ModelPattern::parse(engine, p).is_ok_and(|p| p.matches(model.name.as_str())))
    }

    /// Whether the limit sets anything at all.
    pub fn is_empty(&self) -> bool {
        self.tokens_per_minute.is_none()
            && self.requests_per_minute.is_none()
            && self.concurrent.is_none()
            && self.tokens_per_day.is_none()
    }
}

/// Encoded in key parts: the separators, and `%` so decoding is unambiguous.
const KEY_SEPARATORS: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'%').add(b'|').add(b'=');

fn key_part(value: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::utf8_percent_encode(value, KEY_SEPARATORS).into()
}

/// Checks a limit list: names unique, every number positive, model
/// patterns valid for `engine`.
pub fn validate(limits: &[QuotaLimit], engine: Engine) -> Result<(), (usize, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, limit) in limits.iter().enumerate() {
        if limit.name.trim().is_empty() || limit.name.contains('|') {
            return Err((i, "name must be non-empty and must not contain '|'".into()));
        }
        if !names.insert(limit.name.as_str()) {
            return Err((i, format!("name {:?} is used twice", limit.name)));
        }
        if limit.is_empty() {
            return Err((i, "sets no limit".into()));
        }
        for model in &limit.models {
            ModelPattern::parse(engine, model).map_err(|message| (i, message))?;
        }
        for (field, value) in [
            ("tokensPerMinute", limit.tokens_per_minute),
            ("requestsPerMinute", limit.requests_per_minute),
            ("concurrent", limit.concurrent),
            ("tokensPerDay", limit.tokens_per_day),
        ] {
            if value == Some(0) {
                return Err((i, format!("{field} must be at least 1")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::claims::ClaimMapping;

    fn who(claims: serde_json::Value) -> Identity {
        ClaimMapping::default()
            .resolve()
            .unwrap()
            .identity(claims.as_object().unwrap(), 0, &[])
            .unwrap()
            .identity
    }

    fn every_kind() -> Vec<QuotaLimit> {
        [
            QuotaKey::User,
            QuotaKey::Group,
            QuotaKey::Tenant,
            QuotaKey::Client,
            QuotaKey::Agent,
        ]
        .into_iter()
        .map(|per| QuotaLimit {
            per,
            requests_per_minute: Some(1),
            ..QuotaLimit::named(format!("{per:?}"))
        })
        .collect()
    }

    #[test]
    fn the_same_names_from_two_issuers_are_two_budgets() {
        let claims = |iss: &str| {
            json!({"iss": iss, "sub": "alice", "groups": ["staff"], "tenant": "acme",
                   "azp": "cli", "act": {"sub": "summariser"}})
        };
        let corp = who(claims("https://corp.example"));
        let partner = who(claims("https://partner.example"));
        for limit in every_kind() {
            let a = limit.keys(&corp, Engine::default(), None);
            let b = limit.keys(&partner, Engine::default(), None);
            assert_eq!(a.len(), 1, "{limit:?}");
            assert_ne!(
                a, b,
                "{:?}: partner's alice spends corp's alice's budget",
                limit.per
            );
            assert!(a[0].contains("iss=https://corp.example"), "{a:?}");
        }
    }

    #[test]
    fn names_cannot_forge_another_owners_key() {
        let limit = QuotaLimit {
            requests_per_minute: Some(1),
            ..QuotaLimit::named("l")
        };
        // A user named like the key of another issuer's user.
        let forged = who(json!({"iss": "https://a", "sub": "x|iss=https://b|user=alice"}));
        let real = who(json!({"iss": "https://b", "sub": "alice"}));
        assert_ne!(
            limit.keys(&forged, Engine::default(), None),
            limit.keys(&real, Engine::default(), None)
        );
        assert_eq!(
            limit.keys(&forged, Engine::default(), None),
            ["l|iss=https://a|user=x%7Ciss%3Dhttps://b%7Cuser%3Dalice"]
        );
    }

    #[test]
    fn an_agent_budget_belongs_to_the_current_actor() {
        let limit = QuotaLimit {
            per: QuotaKey::Agent,
            requests_per_minute: Some(1),
            ..QuotaLimit::named("a")
        };
        let chain = who(json!({"iss": "https://a", "sub": "alice",
                               "act": {"sub": "summariser", "act": {"sub": "planner"}}}));
        assert_eq!(
            limit.keys(&chain, Engine::default(), None),
            ["a|iss=https://a|agent=summariser"]
        );
        let person = who(json!({"iss": "https://a", "sub": "alice"}));
        assert!(
            limit.keys(&person, Engine::default(), None).is_empty(),
            "no agent, no agent budget"
        );
    }
}
