//! Access rules: who (user, group, role, scope, tenant, client) may use which
//! models (exact names or globs) on which endpoint classes. Rules only allow;
//! anything no rule allows is denied, and admin endpoints only when a rule
//! names `admin` explicitly.

use serde::{Deserialize, Serialize};

use super::endpoint::EndpointClass;
use crate::canonical::{Engine, ModelPattern};
use crate::claims::Identity;

/// Who a rule applies to: a caller matches if any listed value matches.
///
/// Names are unique only within their issuer: with more than one trusted
/// issuer, a rule that names anyone must say whose names they are
/// (`issuer`), so partner IdP B's `alice` is never corp IdP A's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subjects {
    /// The issuer whose tokens these names come from (its exact URL).
    /// Optional with a single trusted issuer; required with several unless
    /// the subjects are only `anyAuthenticated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Every authenticated caller (of `issuer`, when set).
    #[serde(default)]
    pub any_authenticated: bool,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub clients: Vec<String>,
    /// Agents: the actor acting now (the current `act`, or the client that
    /// obtained a person's token for them), or a machine client acting for
    /// itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Match `agents` against every actor in the delegation chain, not only
    /// the current one. Off by default: an agent must not borrow the grant
    /// of an actor it acts for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_actor: bool,
}

impl Subjects {
    /// Members of any of `groups`.
    pub fn groups(groups: &[&str]) -> Self {
        Self {
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Tokens issued to any of `clients`.
    pub fn clients(clients: &[&str]) -> Self {
        Self {
            clients: clients.iter().map(|c| (*c).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// The same subjects, read from `issuer`'s tokens only.
    #[must_use]
    pub fn of_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Whether `identity` is one of these subjects.
    pub fn matches(&self, identity: &Identity) -> bool {
        if self
            .issuer
            .as_deref()
            .is_some_and(|issuer| issuer != identity.iss)
        {
            return false;
        }
        let any = |wanted: &[String], have: &[String]| wanted.iter().any(|w| have.contains(w));
        let agent = |a: &str| self.agents.iter().any(|w| w == a);
        self.any_authenticated
            || self.users.contains(&identity.user)
            || any(&self.groups, &identity.groups)
            || any(&self.roles, &identity.roles)
            || any(&self.scopes, &identity.scopes)
            || identity
                .tenant
                .as_ref()
                .is_some_and(|t| self.tenants.contains(t))
            || identity
                .client
                .as_ref()
                .is_some_and(|c| self.clients.contains(c))
            || if self.any_actor {
                identity.agents().into_iter().any(agent)
            } else {
                identity.current_agent().is_some_and(agent)
            }
    }

    /// Whether these subjects name anyone (beyond "every caller").
    pub fn names_anyone(&self) -> bool {
        !(self.users.is_empty()
            && self.groups.is_empty()
            && self.roles.is_empty()
            && self.scopes.is_empty()
            && self.tenants.is_empty()
            && self.clients.is_empty()
            && self.agents.is_empty())
    }

    fn is_empty(&self) -> bool {
        !self.any_authenticated && !self.names_anyone()
    }
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// A name for audit lines and metrics.
    pub name: String,
    /// Who the rule applies to.
    pub subjects: Subjects,
    /// The rule applies only to a human acting directly: not to an agent
    /// acting for one, nor to a machine client (e.g. for admin endpoints).
    /// Declared before `models` and `endpoints` (which is required), so a
    /// config file cut short never loses it from an otherwise valid rule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub human_only: bool,
    /// Model names or globs (`*`, `?`): `llama3.2:*`, `*:1b`, `*`. They are
    /// read with the engine's name grammar and matched against canonical
    /// model names (see [`crate::canonical::model_name`]).
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    /// Endpoint classes the rule grants.
    pub endpoints: Vec<EndpointClass>,
}

fn all_models() -> Vec<String> {
    vec!["*".into()]
}

impl Rule {
    /// An allow rule: `subjects` may use `models` (names or globs) on
    /// `endpoints`.
    pub fn new(
        name: impl Into<String>,
        subjects: Subjects,
        models: &[&str],
        endpoints: &[EndpointClass],
    ) -> Self {
        Self {
            name: name.into(),
            subjects,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            endpoints: endpoints.to_vec(),
            human_only: false,
        }
    }
}

/// Why a request was denied: the kind of check that failed, never the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// No rule applies to this caller.
    Subject,
    /// Rules apply to the caller, but none grants this endpoint class.
    Endpoint,
    /// Rules grant the endpoint, but not this model.
    Model,
    /// The path is not a known endpoint and unknown paths are denied.
    UnknownEndpoint,
    /// The request names no model where one is required.
    MissingModel,
    /// An agent the config denies acts in this request.
    Agent,
}

impl DenyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Endpoint => "endpoint",
            Self::Model => "model",
            Self::UnknownEndpoint => "unknown_endpoint",
            Self::MissingModel => "missing_model",
            Self::Agent => "agent",
        }
    }
}

/// The rules of one config generation, with model patterns compiled for
/// the engine.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<(Rule, Vec<ModelPattern>)>,
    allow_unknown: bool,
    denied_agents: Vec<String>,
}

impl Policy {
    /// Compiles `rules` for `engine`. Patterns that do not compile (refused
    /// by [`validate`] before a config is accepted) match nothing.
    pub fn new(rules: &[Rule], allow_unknown: bool, engine: Engine) -> Self {
        Self {
            denied_agents: Vec::new(),
            rules: rules
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        r.models
                            .iter()
                            .filter_map(|m| ModelPattern::parse(engine, m).ok())
                            .collect(),
                    )
                })
                .collect(),
            allow_unknown,
        }
    }

    /// Refuses any request in which one of `agents` acts, whatever the
    /// rules: anywhere in the actor chain, or as the client holding the
    /// token. Denied agents apply to every issuer (over-denying is safe).
    #[must_use]
    pub fn deny_agents(mut self, agents: &[String]) -> Self {
        self.denied_agents = agents.to_vec();
        self
    }

    /// Whether a denied agent acts in this request.
    fn denied_agent_acts(&self, identity: &Identity) -> bool {
        let denied = |a: &str| self.denied_agents.iter().any(|d| d == a);
        identity.agents().into_iter().any(denied) || identity.client.as_deref().is_some_and(denied)
    }

    /// Decides whether `identity` may call an endpoint of `class` with
    /// `model` (a canonical name; `None` where the endpoint names no model).
    /// Returns the name of the rule that allowed it.
    pub fn decide<'a>(
        &'a self,
        identity: &Identity,
        class: EndpointClass,
        model: Option<&str>,
    ) -> Result<&'a str, DenyKind> {
        // First: a denied agent is refused on every endpoint, known or not.
        if self.denied_agent_acts(identity) {
            return Err(DenyKind::Agent);
        }
        if class == EndpointClass::Unknown {
            return if self.allow_unknown {
                Ok("unknown-endpoints-allowed")
            } else {
                Err(DenyKind::UnknownEndpoint)
            };
        }
        let mut caller_matched = false;
        let mut endpoint_matched = false;
        for (rule, globs) in &self.rules {
            if !rule.subjects.matches(identity) || (rule.human_only && !identity.is_human()) {
                continue;
            }
            caller_matched = true;
            if !rule.endpoints.contains(&class) {
                continue;
            }
            endpoint_matched = true;
            let model_ok = match model {
                Some(model) => globs.iter().any(|g| g.matches(model)),
                None => true,
            };
            if model_ok {
                return Ok(&rule.name);
            }
        }
        Err(match (caller_matched, endpoint_matched) {
            (false, _) => DenyKind::Subject,
            (true, false) => DenyKind::Endpoint,
            (true, true) => DenyKind::Model,
        })
    }

    /// The scopes named by the rules that grant `class` on `model` and would
    /// apply to `identity` but for its scopes: a caller refused there may
    /// ask for one of them (step-up authorization). Rules of another
    /// issuer, and human-only rules for an agent, are left out.
    pub fn scopes_granting(
        &self,
        identity: &Identity,
        class: EndpointClass,
        model: &str,
    ) -> Vec<String> {
        let mut scopes: Vec<String> = Vec::new();
        for (rule, globs) in &self.rules {
            let subjects = &rule.subjects;
            if subjects
                .issuer
                .as_deref()
                .is_some_and(|i| i != identity.iss)
                || (rule.human_only && !identity.is_human())
                || !rule.endpoints.contains(&class)
                || !globs.iter().any(|g| g.matches(model))
            {
                continue;
            }
            for scope in &subjects.scopes {
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
        }
        scopes
    }

    /// Every scope a rule names, for the protected-resource metadata's
    /// `scopes_supported`.
    pub fn scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = Vec::new();
        for scope in self
            .rules
            .iter()
            .flat_map(|(rule, _)| &rule.subjects.scopes)
        {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        scopes
    }

    /// Whether `identity` may use the canonical `model` for inference (to
    /// filter model lists and judge endpoints that describe a model).
    pub fn may_use(&self, identity: &Identity, model: &str) -> bool {
        self.decide(identity, EndpointClass::Inference, Some(model))
            .is_ok()
    }
}

/// Checks a rule list: names, subjects, endpoints and model patterns (in
/// `engine`'s name grammar).
pub fn validate(rules: &[Rule], engine: Engine) -> Result<(), (usize, String)> {
    for (i, rule) in rules.iter().enumerate() {
        if rule.name.trim().is_empty() {
            return Err((i, "name must not be empty".into()));
        }
        if rule.subjects.is_empty() {
            return Err((
                i,
                "subjects must name someone (or set anyAuthenticated)".into(),
            ));
        }
        if rule.endpoints.is_empty() {
            return Err((i, "endpoints must list at least one class".into()));
        }
        if rule.models.is_empty() {
            return Err((i, "models must list at least one name or glob".into()));
        }
        for model in &rule.models {
            ModelPattern::parse(engine, model).map_err(|message| (i, message))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::claims::ClaimMapping;

    /// A rule written without `models` grants every model (README,
    /// "Access policy"), as one that says `models: ["*"]`.
    #[test]
    fn a_rule_without_models_grants_every_model() {
        let rule: Rule = serde_json::from_value(json!({
            "name": "all", "subjects": {"anyAuthenticated": true}, "endpoints": ["inference"],
        }))
        .unwrap();
        assert_eq!(rule.models, ["*"]);
    }

    /// A 403's `denied_by` is API: clients and dashboards match on these
    /// names (README, "Access policy"); each kind has its own.
    #[test]
    fn deny_kinds_have_their_documented_names() {
        let kinds = [
            (DenyKind::Subject, "subject"),
            (DenyKind::Endpoint, "endpoint"),
            (DenyKind::Model, "model"),
            (DenyKind::UnknownEndpoint, "unknown_endpoint"),
            (DenyKind::MissingModel, "missing_model"),
            (DenyKind::Agent, "agent"),
        ];
        for (kind, name) in kinds {
            assert_eq!(kind.as_str(), name, "{kind:?}");
        }
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
        Policy::new(
            &[
                Rule::new(
                    "power",
                    Subjects::groups(&["ai-power-users"]),
                    &["*"],
                    &[Inference, Read],
                ),
                Rule::new(
                    "staff",
                    Subjects::groups(&["staff"]),
                    &["*:1b", "*:0.5b"],
                    &[Inference, Read],
                ),
                Rule::new(
                    "admins",
                    Subjects {
                        roles: vec!["llm-admin".into()],
                        ..Default::default()
                    },
                    &["*"],
                    &[Admin],
                ),
                Rule::new(
                    "bot",
                    Subjects::clients(&["bot"]),
                    &["llama3.2:1b"],
                    &[Inference],
                ),
                Rule::new(
                    "acme",
                    Subjects {
                        tenants: vec!["acme".into()],
                        ..Default::default()
                    },
                    &["acme-*"],
                    &[Inference],
                ),
                Rule::new(
                    "scoped",
                    Subjects {
                        scopes: vec!["llm:read".into()],
                        ..Default::default()
                    },
                    &["*"],
                    &[Read],
                ),
                Rule::new(
                    "dave",
                    Subjects {
                        users: vec!["dave".into()],
                        ..Default::default()
                    },
                    &["?wen*:*"],
                    &[Inference],
                ),
            ],
            false,
            Engine::Ollama,
        )
    }

    type Row<'a> = (
        &'a Identity,
        EndpointClass,
        Option<&'a str>,
        Result<&'a str, DenyKind>,
    );

    #[test]
    fn users_times_models_times_endpoints() {
        use EndpointClass::*;
        let p = policy();
        let alice =
            who(json!({"sub": "alice", "groups": ["ai-power-users"], "roles": ["llm-admin"]}));
        let bob = who(json!({"sub": "bob", "groups": ["staff"], "tenant": "acme"}));
        let carol = who(json!({"sub": "carol", "tenant": "globex"}));
        let bot = who(json!({"sub": "svc", "azp": "bot"}));
        let reader = who(json!({"sub": "r", "scope": "openid llm:read"}));
        let dave = who(json!({"sub": "dave"}));
        let table: &[Row] = &[
            (&alice, Inference, Some("llama3.1:70b"), Ok("power")),
            (&alice, Admin, None, Ok("admins")),
            (&bob, Inference, Some("llama3.2:1b"), Ok("staff")),
            (&bob, Inference, Some("qwen2.5:0.5b"), Ok("staff")),
            (&bob, Inference, Some("llama3.1:70b"), Err(DenyKind::Model)),
            (&bob, Inference, Some("acme-finetune"), Ok("acme")),
            (&bob, Admin, None, Err(DenyKind::Endpoint)),
            (
                &carol,
                Inference,
                Some("llama3.2:1b"),
                Err(DenyKind::Subject),
            ),
            (&carol, Read, None, Err(DenyKind::Subject)),
            (&bot, Inference, Some("llama3.2:1b"), Ok("bot")),
            (&bot, Inference, Some("llama3.2:3b"), Err(DenyKind::Model)),
            (&bot, Read, None, Err(DenyKind::Endpoint)),
            (&reader, Read, None, Ok("scoped")),
            (&reader, Inference, Some("x"), Err(DenyKind::Endpoint)),
            (&dave, Inference, Some("qwen2.5:0.5b"), Ok("dave")),
            (&dave, Inference, Some("wen"), Err(DenyKind::Model)),
            (&alice, Unknown, None, Err(DenyKind::UnknownEndpoint)),
        ];
        for (i, (identity, class, model, expected)) in table.iter().enumerate() {
            assert_eq!(
                p.decide(identity, *class, *model),
                *expected,
                "row {i}: {} {class:?} {model:?}",
                identity.user
            );
        }
    }

    #[test]
    fn unknown_endpoints_can_be_allowed_by_config() {
        let p = Policy::new(&[], true, Engine::Ollama);
        let anyone = who(json!({"sub": "x"}));
        assert!(p.decide(&anyone, EndpointClass::Unknown, None).is_ok());
        assert_eq!(
            p.decide(&anyone, EndpointClass::Admin, None),
            Err(DenyKind::Subject)
        );
    }

    fn validate_ollama(rules: &[Rule]) -> Result<(), (usize, String)> {
        validate(rules, Engine::Ollama)
    }

    #[test]
    fn bad_rules_are_refused() {
        let ok = Subjects::groups(&["g"]);
        assert!(
            validate_ollama(&[Rule::new("r", ok.clone(), &["*"], &[EndpointClass::Read])]).is_ok()
        );
        assert!(
            validate_ollama(&[Rule::new("", ok.clone(), &["*"], &[EndpointClass::Read])]).is_err()
        );
        assert!(
            validate_ollama(&[Rule::new(
                "r",
                Subjects::default(),
                &["*"],
                &[EndpointClass::Read]
            )])
            .is_err()
        );
        assert!(
            validate_ollama(&[Rule::new("r", ok.clone(), &[], &[EndpointClass::Read])]).is_err()
        );
        assert!(
            validate_ollama(&[Rule::new("r", ok.clone(), &["a b"], &[EndpointClass::Read])])
                .is_err()
        );
        assert!(validate_ollama(&[Rule::new("r", ok, &["*"], &[])]).is_err());
    }

    /// The scopes a refused caller may ask for: those of the rules that
    /// would grant this class on this target, of its issuer, human-only
    /// ones only for a human; each once.
    #[test]
    fn the_scopes_that_would_grant_a_target_are_named() {
        use EndpointClass::*;
        let scoped = |name: &str, scopes: &[&str], targets: &[&str], classes: &[EndpointClass]| {
            Rule::new(
                name,
                Subjects {
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                    ..Subjects::default()
                },
                targets,
                classes,
            )
        };
        let mut human = scoped("human", &["t:human"], &["tool:deploy"], &[Inference]);
        human.human_only = true;
        let mut other_issuer = scoped("other", &["t:other"], &["tool:deploy"], &[Inference]);
        other_issuer.subjects.issuer = Some("https://elsewhere".into());
        let policy = Policy::new(
            &[
                scoped("a", &["t:deploy", "t:ops"], &["tool:deploy*"], &[Inference]),
                scoped("b", &["t:deploy"], &["tool:deploy"], &[Inference, Read]),
                scoped("read-only", &["t:read"], &["tool:deploy"], &[Read]),
                scoped("elsewhere", &["t:search"], &["tool:search"], &[Inference]),
                human,
                other_issuer,
            ],
            false,
            Engine::Mcp,
        );
        let person = who(json!({"iss": "https://idp", "sub": "bob"}));
        assert_eq!(
            policy.scopes_granting(&person, Inference, "tool:deploy"),
            ["t:deploy", "t:ops", "t:human"]
        );
        let agent = who(json!({"iss": "https://idp", "sub": "bob", "act": {"sub": "bot"}}));
        assert_eq!(
            policy.scopes_granting(&agent, Inference, "tool:deploy"),
            ["t:deploy", "t:ops"]
        );
        assert_eq!(
            policy.scopes_granting(&person, Read, "tool:deploy"),
            ["t:deploy", "t:read"]
        );
        assert!(
            policy
                .scopes_granting(&person, Inference, "tool:delete")
                .is_empty()
        );
        assert_eq!(
            policy.scopes(),
            [
                "t:deploy", "t:ops", "t:read", "t:search", "t:human", "t:other"
            ]
        );
    }

    #[test]
    fn agents_are_matched_denied_and_kept_from_human_only_rules() {
        let mut admin = Rule::new(
            "admins",
            Subjects::groups(&["admins"]),
            &["*"],
            &[EndpointClass::Admin, EndpointClass::Inference],
        );
        admin.human_only = true;
        let bots = Rule::new(
            "bots",
            Subjects {
                agents: vec!["summariser".into()],
                ..Subjects::default()
            },
            &["*"],
            &[EndpointClass::Inference],
        );
        let p = Policy::new(&[admin, bots], false, Engine::Ollama).deny_agents(&["rogue".into()]);
        let human = who(serde_json::json!({"sub": "alice", "groups": ["admins"]}));
        assert_eq!(p.decide(&human, EndpointClass::Admin, None), Ok("admins"));
        // The same user through an agent: not for human-only rules (the
        // bots rule applies to the caller, but grants no admin).
        let through_agent = who(serde_json::json!({"sub": "alice", "groups": ["admins"],
            "act": {"sub": "summariser"}}));
        assert_eq!(
            p.decide(&through_agent, EndpointClass::Admin, None),
            Err(DenyKind::Endpoint)
        );
        assert_eq!(
            p.decide(&through_agent, EndpointClass::Inference, Some("m")),
            Ok("bots")
        );
        // A denied agent anywhere in the chain is refused whatever the rules.
        let rogue = who(serde_json::json!({"sub": "alice", "groups": ["admins"],
            "act": {"sub": "summariser", "act": {"sub": "rogue"}}}));
        assert_eq!(
            p.decide(&rogue, EndpointClass::Inference, Some("m")),
            Err(DenyKind::Agent)
        );
    }

    #[test]
    fn a_denied_agent_is_refused_on_unknown_endpoints_too() {
        // allowUnknownEndpoints must not open a path around deniedAgents.
        let p = Policy::new(&[], true, Engine::Ollama).deny_agents(&["rogue".into()]);
        let rogue = who(json!({"sub": "alice", "act": {"sub": "rogue"}}));
        assert_eq!(
            p.decide(&rogue, EndpointClass::Unknown, None),
            Err(DenyKind::Agent)
        );
        let alice = who(json!({"sub": "alice"}));
        assert!(p.decide(&alice, EndpointClass::Unknown, None).is_ok());
    }

    #[test]
    fn a_denied_agent_is_refused_as_the_client_holding_the_token() {
        // Without userClients an exchanged token looks like a direct
        // sign-in, but the client holding it is still the one denied.
        let p = Policy::new(
            &[Rule::new(
                "all",
                Subjects::groups(&["admins"]),
                &["*"],
                &[EndpointClass::Inference],
            )],
            false,
            Engine::Ollama,
        )
        .deny_agents(&["attach-agent".into()]);
        let exchanged = who(json!({"sub": "alice", "azp": "attach-agent", "groups": ["admins"]}));
        assert_eq!(
            p.decide(&exchanged, EndpointClass::Inference, Some("m")),
            Err(DenyKind::Agent)
        );
    }

    #[test]
    fn agent_rules_match_the_current_actor_unless_they_opt_into_the_chain() {
        let by_agent = |any_actor| {
            Policy::new(
                &[Rule::new(
                    "planner",
                    Subjects {
                        agents: vec!["planner".into()],
                        any_actor,
                        ..Subjects::default()
                    },
                    &["*"],
                    &[EndpointClass::Inference],
                )],
                false,
                Engine::Ollama,
            )
        };
        // The summariser acts now, for the planner: it must not borrow the
        // planner's grant.
        let chain =
            who(json!({"sub": "alice", "act": {"sub": "summariser", "act": {"sub": "planner"}}}));
        assert_eq!(
            by_agent(false).decide(&chain, EndpointClass::Inference, Some("m")),
            Err(DenyKind::Subject)
        );
        assert_eq!(
            by_agent(true).decide(&chain, EndpointClass::Inference, Some("m")),
            Ok("planner")
        );
        let planner = who(json!({"sub": "alice", "act": {"sub": "planner"}}));
        assert_eq!(
            by_agent(false).decide(&planner, EndpointClass::Inference, Some("m")),
            Ok("planner")
        );
    }

    #[test]
    fn names_of_one_issuer_never_match_anothers() {
        let p = Policy::new(
            &[Rule::new(
                "corp-alice",
                Subjects {
                    users: vec!["alice".into()],
                    ..Subjects::default()
                }
                .of_issuer("https://corp.example"),
                &["*"],
                &[EndpointClass::Admin],
            )],
            false,
            Engine::Ollama,
        );
        let corp = who(json!({"iss": "https://corp.example", "sub": "alice"}));
        let partner = who(json!({"iss": "https://partner.example", "sub": "alice"}));
        assert_eq!(
            p.decide(&corp, EndpointClass::Admin, None),
            Ok("corp-alice")
        );
        assert_eq!(
            p.decide(&partner, EndpointClass::Admin, None),
            Err(DenyKind::Subject)
        );
    }
}
