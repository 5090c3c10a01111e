//! The identity read out of each IdP's documented tokens (fixtures in
//! `testdata/tokens/`, each citing its source), and every claim shape that
//! must not grant.

use serde_json::{Value, json};

use super::*;

fn mapping(preset: Preset) -> ResolvedMapping {
    ClaimMapping::preset(preset).resolve().unwrap()
}

fn identity(preset: Preset, claims: Value) -> Identity {
    mapped(&mapping(preset), claims).identity
}

fn mapped(mapping: &ResolvedMapping, claims: Value) -> Mapped {
    let Value::Object(map) = claims else {
        panic!("claims must be an object")
    };
    mapping.identity(&map, 0, &[]).unwrap()
}

/// Every fixture under `testdata/tokens/`: the claims, and what the gateway
/// must make of them.
#[test]
fn documented_tokens_of_every_preset_map_as_their_idp_says() {
    let dir = crate::testkit::crate_dir().join("testdata/tokens");
    let mut seen = std::collections::BTreeSet::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let fixture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(
            fixture["source"].as_str().is_some_and(|s| s.len() > 20),
            "{name}: cite the documentation"
        );
        let preset: Preset = fixture["preset"].as_str().unwrap().parse().unwrap();
        seen.insert(format!("{preset:?}"));
        let mut claims = ClaimMapping::preset(preset);
        claims.namespace = fixture["namespace"].as_str().map(str::to_owned);
        let user_clients: Vec<String> =
            serde_json::from_value(fixture["userClients"].clone()).unwrap_or_default();
        let mapping = claims.resolve().unwrap().with_user_clients(&user_clients);
        let id = mapped(&mapping, fixture["claims"].clone()).identity;
        let expect = &fixture["expect"];
        let check = |field: &str, got: Value| {
            if !expect[field].is_null() {
                assert_eq!(got, expect[field], "{name}: {field}");
            }
        };
        check("user", json!(id.user));
        check("client", json!(id.client));
        check("tenant", json!(id.tenant));
        check("scopes", json!(id.scopes));
        check("roles", json!(id.roles));
        check("groups", json!(id.groups));
        check("machine", json!(id.machine));
        check("agents", json!(id.agents()));
        check("human", json!(id.is_human()));
        assert_eq!(
            id.iss,
            fixture["claims"]["iss"].as_str().unwrap(),
            "{name}: the issuer travels with the subject"
        );
    }
    for preset in [
        "Entra",
        "Okta",
        "Auth0",
        "Descope",
        "Keycloak",
        "Kubernetes",
    ] {
        assert!(seen.contains(preset), "no fixture for {preset}");
    }
}

#[test]
fn a_service_account_name_makes_no_machine_unless_the_token_says_so() {
    // A person Keycloak let sign up as `service-account-attach-cli`,
    // signing in through attach-cli: no service-account client_id claim.
    let person = identity(
        Preset::Keycloak,
        json!({"sub": "57ad1eb3", "azp": "attach-cli",
               "preferred_username": "service-account-attach-cli"}),
    );
    assert!(!person.machine && person.is_human());
    assert!(person.agents().is_empty());
    // The same name for every other preset: still a person.
    for preset in [Preset::Generic, Preset::Okta, Preset::Descope] {
        let id = identity(
            preset,
            json!({"sub": "57ad1eb3", "azp": "x", "cid": "x", "uid": "u",
                   "preferred_username": "service-account-x"}),
        );
        assert!(!id.machine, "{preset:?}");
    }
    // Keycloak's service account, as its service_account scope marks it.
    let sa = identity(
        Preset::Keycloak,
        json!({"sub": "8dbf", "azp": "attach-m2m", "client_id": "attach-m2m",
               "preferred_username": "service-account-attach-m2m"}),
    );
    assert!(sa.machine);
    assert_eq!(sa.agents(), ["attach-m2m"]);
    // A client_id naming another client than the one holding the token is
    // no service account of this client.
    let odd = identity(
        Preset::Keycloak,
        json!({"sub": "8dbf", "azp": "attach-agent", "client_id": "attach-m2m"}),
    );
    assert!(!odd.machine);
}

/// Entra: `idtyp`, when the resource configured it, decides on its own;
/// only without it does the absence of `scp` mark an app-only token.
#[test]
fn entra_idtyp_decides_before_scp() {
    let cases = [
        // idtyp says app: a machine even beside an scp claim.
        (json!({"idtyp": "app", "scp": "Model.Read"}), true),
        (json!({"idtyp": "app"}), true),
        // idtyp says user: a person even when no scp came along.
        (json!({"idtyp": "user"}), false),
        (json!({"idtyp": "user", "scp": "Model.Read"}), false),
        // No idtyp (or one Entra does not document): scp decides.
        (json!({}), true),
        (json!({"scp": "Model.Read"}), false),
        (json!({"idtyp": "device", "scp": "Model.Read"}), false),
        (json!({"idtyp": "device"}), true),
    ];
    for (extra, machine) in cases {
        let mut claims = json!({"sub": "690222be", "oid": "690222be",
                                "azp": "6e74172b", "tid": "72f988bf"});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let id = identity(Preset::Entra, claims);
        assert_eq!(id.machine, machine, "{extra}");
        assert_eq!(id.is_human(), !machine, "{extra}");
    }
}

#[test]
fn a_persons_token_held_by_another_client_is_a_delegation_by_that_client() {
    let mapping = mapping(Preset::Keycloak).with_user_clients(&["attach-cli".into()]);
    // Signed in through a user client: a person acting directly.
    let direct = mapped(&mapping, json!({"sub": "alice", "azp": "attach-cli"})).identity;
    assert!(direct.is_human());
    // Exchanged by attach-agent (Keycloak's standard token exchange keeps
    // sub, sets azp to the requester and adds no act).
    let exchanged = mapped(&mapping, json!({"sub": "alice", "azp": "attach-agent"})).identity;
    assert!(!exchanged.is_human());
    assert_eq!(exchanged.actors, ["attach-agent"]);
    assert_eq!(exchanged.current_agent(), Some("attach-agent"));
    assert_eq!(exchanged.user, "alice", "the subject stays the user");
    // A service account's token exchanged by another client: the token no
    // longer says which client's account it is, and another client holds
    // it: that client acts.
    let sa = mapped(
        &mapping,
        json!({"sub": "8dbf", "azp": "attach-agent",
               "preferred_username": "service-account-attach-m2m"}),
    )
    .identity;
    assert!(!sa.is_human());
    assert_eq!(sa.agents(), ["attach-agent"]);
    // An explicit act chain wins over azp.
    let act = mapped(
        &mapping,
        json!({"sub": "alice", "azp": "attach-agent", "act": {"sub": "summariser"}}),
    )
    .identity;
    assert_eq!(act.actors, ["summariser"]);
    // Without userClients the gateway cannot tell, and says so by
    // refusing human-only rules at config load (see config validation).
    let unknown = identity(
        Preset::Keycloak,
        json!({"sub": "alice", "azp": "attach-agent"}),
    );
    assert!(unknown.is_human());
}

#[test]
fn malformed_delegation_is_refused_not_read_as_no_actor() {
    let m = mapping(Preset::Generic);
    for act in [
        json!(["agent"]),
        json!("agent"),
        json!({"sub": 7}),
        json!({}),
    ] {
        let claims = json!({"sub": "alice", "act": act});
        assert_eq!(
            m.identity(claims.as_object().unwrap(), 0, &[]).unwrap_err(),
            MappingError::InvalidActor,
            "{claims}"
        );
    }
    let mut deep = json!({"sub": "a9"});
    for i in (1..=MAX_ACTORS).rev() {
        deep = json!({"sub": format!("a{i}"), "act": deep});
    }
    let claims = json!({"sub": "alice", "act": deep});
    assert_eq!(
        m.identity(claims.as_object().unwrap(), 0, &[]).unwrap_err(),
        MappingError::TooManyActors
    );
}

#[test]
fn claims_of_undocumented_shapes_never_become_names() {
    for (preset, claims, field) in [
        (
            Preset::Generic,
            json!({"sub": "u", "groups": {"staff": false}}),
            "groups",
        ),
        (
            Preset::Generic,
            json!({"sub": "u", "groups": [{"staff": "no"}]}),
            "groups",
        ),
        (
            Preset::Keycloak,
            json!({"sub": "u", "groups": "staff"}),
            "groups",
        ),
        (
            Preset::Descope,
            json!({"sub": "u", "roles": {"llm-admin": false}}),
            "roles",
        ),
        (
            Preset::Descope,
            json!({"sub": "u", "roles": {"llm-admin": true}}),
            "roles",
        ),
        (
            Preset::Keycloak,
            json!({"sub": "u", "realm_access": {"roles": {"llm-admin": 1}}}),
            "roles",
        ),
        (
            Preset::Generic,
            json!({"sub": "u", "roles": ["llm-admin", 1]}),
            "roles",
        ),
        (
            Preset::Generic,
            json!({"sub": "u", "scope": {"llm:read": true}}),
            "scopes",
        ),
        (
            Preset::Generic,
            json!({"sub": "u", "tenant": ["acme"]}),
            "tenant",
        ),
        (
            Preset::Generic,
            json!({"sub": "u", "tenant": {"acme": true}}),
            "tenant",
        ),
        (
            Preset::Descope,
            json!({"sub": "u", "tenants": {"T1": {}, "T2": {}}}),
            "tenant",
        ),
        (
            Preset::Generic,
            json!({"sub": "u", "azp": ["bot"]}),
            "client",
        ),
    ] {
        let out = mapped(&mapping(preset), claims.clone());
        let id = out.identity;
        assert!(
            id.groups.is_empty() && id.roles.is_empty() && id.scopes.is_empty(),
            "{claims}"
        );
        assert!(id.tenant.is_none() && id.client.is_none(), "{claims}");
        assert_eq!(out.ignored, [field], "{claims}: reported for the metric");
    }
    // A user claim that is not a name refuses the token.
    for claims in [
        json!({"sub": {"alice": true}}),
        json!({"sub": ["alice"]}),
        json!({"sub": ""}),
    ] {
        assert_eq!(
            mapping(Preset::Generic)
                .identity(claims.as_object().unwrap(), 0, &[])
                .unwrap_err(),
            MappingError::NoUser,
            "{claims}"
        );
    }
}

#[test]
fn auth0_reads_custom_claims_only_under_its_namespace() {
    let mapping = ClaimMapping {
        namespace: Some("https://example.com/".into()),
        ..ClaimMapping::preset(Preset::Auth0)
    }
    .resolve()
    .unwrap();
    let id = mapped(
        &mapping,
        json!({"sub": "auth0|1", "https://example.com/roles": ["admin"],
               "https://example.com/groups": ["ml"], "https://example.com/tenant": "org_1",
               "azp": "app", "permissions": ["read:models"]}),
    )
    .identity;
    assert_eq!(id.roles, ["admin"]);
    assert_eq!(id.groups, ["ml"]);
    assert_eq!(id.tenant.as_deref(), Some("org_1"));
    assert_eq!(id.scopes, ["read:models"]);
    // The namespaced claim missing or null: no fallback to a plain one that
    // any Action (or another namespace) could have written.
    for claims in [
        json!({"sub": "auth0|1", "roles": ["llm-admin"], "groups": ["admins"], "org_id": "o"}),
        json!({"sub": "auth0|1", "https://example.com/roles": null, "roles": ["llm-admin"]}),
    ] {
        let id = mapped(&mapping, claims.clone()).identity;
        assert!(
            id.roles.is_empty() && id.groups.is_empty() && id.tenant.is_none(),
            "{claims}"
        );
    }
}

#[test]
fn an_auth0_namespace_must_be_a_url() {
    for bad in [
        "example.com",
        "example.com/claims",
        "ftp://example.com",
        "https://",
        // A scheme and an empty host (http::Uri accepts these).
        "https://:443/claims",
        "http://@/claims",
        "",
    ] {
        let err = ClaimMapping {
            namespace: Some(bad.into()),
            ..ClaimMapping::preset(Preset::Auth0)
        }
        .resolve()
        .unwrap_err();
        assert!(err.starts_with("namespace"), "{bad:?}: {err}");
    }
    let other_preset = ClaimMapping {
        namespace: Some("https://example.com".into()),
        ..ClaimMapping::preset(Preset::Okta)
    };
    assert!(other_preset.resolve().is_err(), "a namespace nobody reads");
}

#[test]
fn delegated_tokens_keep_the_subject_as_the_user() {
    // RFC 8693 §4.1: the current actor first, then whom it acted for.
    let delegated = identity(
        Preset::Generic,
        json!({"sub": "alice", "azp": "planner", "act": {"sub": "summariser",
               "act": {"sub": "planner"}}}),
    );
    assert_eq!(delegated.actors, ["summariser", "planner"]);
    assert_eq!(delegated.agents(), ["summariser", "planner"]);
    assert_eq!(delegated.current_agent(), Some("summariser"));
    assert!(!delegated.is_human() && !delegated.machine);
    assert_eq!(delegated.user, "alice");
    // RFC 9068: a client-credentials token's sub is the client.
    let m = identity(
        Preset::Generic,
        json!({"sub": "batch-job", "client_id": "batch-job"}),
    );
    assert!(m.machine);
    assert_eq!(m.agents(), ["batch-job"]);
    // A person through an app: human, no agent.
    let human = identity(Preset::Generic, json!({"sub": "u1", "azp": "attach-cli"}));
    assert!(human.is_human());
    assert!(human.agents().is_empty());
}

#[test]
fn keycloak_reads_realm_roles_groups_and_tenant() {
    let id = identity(
        Preset::Keycloak,
        json!({"sub": "u1", "azp": "attach-cli", "groups": ["staff"],
               "realm_access": {"roles": ["llm-user"]}, "scope": "openid email",
               "tenant": "acme"}),
    );
    assert_eq!(id.user, "u1");
    assert_eq!(id.groups, ["staff"]);
    assert_eq!(id.roles, ["llm-user"]);
    assert_eq!(id.scopes, ["openid", "email"]);
    assert_eq!(id.tenant.as_deref(), Some("acme"));
    assert_eq!(id.client.as_deref(), Some("attach-cli"));
}

#[test]
fn every_field_can_be_overridden_by_a_path() {
    let mapping = ClaimMapping {
        user: Some("preferred_username".into()),
        roles: Some("resource_access.attach-gateway.roles".into()),
        tenant: Some("org.id".into()),
        ..ClaimMapping::preset(Preset::Keycloak)
    }
    .resolve()
    .unwrap();
    let id = mapped(
        &mapping,
        json!({"sub": "s", "preferred_username": "alice",
               "resource_access": {"attach-gateway": {"roles": ["r"]}},
               "org": {"id": 7}}),
    )
    .identity;
    assert_eq!(id.user, "alice");
    assert_eq!(id.roles, ["r"]);
    assert_eq!(id.tenant.as_deref(), Some("7"));
}

#[test]
fn a_token_without_a_user_is_refused() {
    let mapping = ClaimMapping::default().resolve().unwrap();
    for claims in [json!({"iss": "x"}), json!({"sub": ""})] {
        assert_eq!(
            mapping
                .identity(claims.as_object().unwrap(), 0, &[])
                .unwrap_err(),
            MappingError::NoUser
        );
    }
}

#[test]
fn bad_paths_are_refused() {
    for bad in ["", "a..b", "a|", ".a"] {
        assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn presets_parse_from_auth_backend_names() {
    assert_eq!("Keycloak".parse::<Preset>(), Ok(Preset::Keycloak));
    assert_eq!("entra".parse::<Preset>(), Ok(Preset::Entra));
    assert!("cognito".parse::<Preset>().is_err());
}

/// A numeric id in a name claim is read as its decimal text, whatever its
/// range: negative, or above `i64::MAX`. Anything else is not a name.
#[test]
fn integer_names_of_every_range_are_read_as_text() {
    for (value, text) in [
        (json!("alice"), Some("alice")),
        (json!(42), Some("42")),
        (json!(-42), Some("-42")),
        (json!(u64::MAX), Some("18446744073709551615")),
        (json!(1.5), None),
        (json!(true), None),
        (json!(["alice"]), None),
    ] {
        assert_eq!(typed::text(&value).as_deref(), text, "{value}");
    }
}

/// A ServiceAccount token as the API server mints it, with `edit` applied.
fn service_account_token(edit: impl FnOnce(&mut Value)) -> Value {
    let mut claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": "system:serviceaccount:search:rag-indexer",
        "aud": ["attach.dev/search/embed"],
        "kubernetes.io": {
            "namespace": "search",
            "serviceaccount": {"name": "rag-indexer", "uid": "u-1"},
            "pod": {"name": "rag-indexer-7d9f-abcde", "uid": "u-2"},
            "node": {"name": "node-a", "uid": "u-3"}
        }
    });
    edit(&mut claims);
    claims
}

#[test]
fn a_service_account_token_names_its_workload_as_the_api_server_does() {
    let id = identity(Preset::Kubernetes, service_account_token(|_| {}));
    assert_eq!(id.user, "system:serviceaccount:search:rag-indexer");
    // The longest name Kubernetes allows, with dots and digits.
    let longest = format!("{}.b-9", "a".repeat(249));
    let long = identity(
        Preset::Kubernetes,
        service_account_token(|c| {
            c["kubernetes.io"]["serviceaccount"]["name"] = json!(longest);
            c["sub"] = json!(format!("system:serviceaccount:search:{longest}"));
        }),
    );
    assert_eq!(long.user, format!("system:serviceaccount:search:{longest}"));
    assert_eq!(id.tenant.as_deref(), Some("search"));
    assert_eq!(
        id.groups,
        ["system:serviceaccounts", "system:serviceaccounts:search"]
    );
    assert!(id.machine && !id.is_human());
    assert_eq!(id.agents(), ["system:serviceaccount:search:rag-indexer"]);
    // A token not bound to a pod (TokenRequest for the account alone).
    let unbound = identity(
        Preset::Kubernetes,
        service_account_token(|c| {
            let k8s = c["kubernetes.io"].as_object_mut().unwrap();
            k8s.remove("pod");
            k8s.remove("node");
        }),
    );
    assert_eq!(unbound.user, id.user);
    // The pod and node are the workload's, where the token names them.
    assert_eq!(id.pod.as_deref(), Some("rag-indexer-7d9f-abcde"));
    assert_eq!(id.node.as_deref(), Some("node-a"));
    assert_eq!((unbound.pod, unbound.node), (None, None));
    // A person's token names neither, whatever its claims say.
    let person = identity(
        Preset::Keycloak,
        json!({"iss": "https://idp", "sub": "u", "pod": "p", "kubernetes.io": {"pod": {"name": "p"}}}),
    );
    assert_eq!((person.pod, person.node), (None, None));
}

/// Claims a token could carry that no API server mints: each names nobody,
/// never a workload it was not issued to.
#[test]
fn a_service_account_token_that_names_nobody_or_two_accounts_is_refused() {
    let cases: Vec<(&str, Value)> = vec![
        (
            "no kubernetes.io",
            service_account_token(|c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            }),
        ),
        (
            "kubernetes.io not an object",
            service_account_token(|c| {
                c["kubernetes.io"] = json!("search");
            }),
        ),
        (
            "no namespace",
            service_account_token(|c| {
                c["kubernetes.io"]
                    .as_object_mut()
                    .unwrap()
                    .remove("namespace");
            }),
        ),
        (
            "namespace not a string",
            service_account_token(|c| {
                c["kubernetes.io"]["namespace"] = json!(["search"]);
            }),
        ),
        (
            "no serviceaccount",
            service_account_token(|c| {
                c["kubernetes.io"]
                    .as_object_mut()
                    .unwrap()
                    .remove("serviceaccount");
            }),
        ),
        (
            "serviceaccount name empty",
            service_account_token(|c| {
                c["kubernetes.io"]["serviceaccount"]["name"] = json!("");
            }),
        ),
        (
            "sub names another account",
            service_account_token(|c| {
                c["sub"] = json!("system:serviceaccount:search:admin");
            }),
        ),
        (
            "sub names another namespace",
            service_account_token(|c| {
                c["sub"] = json!("system:serviceaccount:kube-system:rag-indexer");
            }),
        ),
        (
            "sub is a person",
            service_account_token(|c| c["sub"] = json!("alice")),
        ),
        (
            "no sub",
            service_account_token(|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        // `a:b` + `c` and `a` + `b:c` would give the same sub.
        (
            "a colon in the namespace",
            service_account_token(|c| {
                c["kubernetes.io"]["namespace"] = json!("search:rag");
                c["kubernetes.io"]["serviceaccount"]["name"] = json!("indexer");
                c["sub"] = json!("system:serviceaccount:search:rag:indexer");
            }),
        ),
        (
            "upper case",
            service_account_token(|c| {
                c["kubernetes.io"]["namespace"] = json!("Search");
                c["sub"] = json!("system:serviceaccount:Search:rag-indexer");
            }),
        ),
        (
            "pod not an object",
            service_account_token(|c| {
                c["kubernetes.io"]["pod"] = json!("rag-indexer-7d9f-abcde");
            }),
        ),
        (
            "an actor chain",
            service_account_token(|c| {
                c["act"] = json!({"sub": "someone"});
            }),
        ),
    ];
    let mapping = mapping(Preset::Kubernetes);
    for (name, claims) in cases {
        let Value::Object(map) = claims else {
            unreachable!()
        };
        let got = mapping.identity(&map, 0, &[]).map(|m| m.identity.user);
        assert!(got.is_err(), "{name}: read as {got:?}");
    }
}

#[test]
fn the_kubernetes_preset_refuses_claim_path_overrides() {
    for field in ["user", "groups", "roles", "scopes", "tenant", "client"] {
        let mut mapping = ClaimMapping::preset(Preset::Kubernetes);
        let path = Some("custom".to_owned());
        match field {
            "user" => mapping.user = path,
            "groups" => mapping.groups = path,
            "roles" => mapping.roles = path,
            "scopes" => mapping.scopes = path,
            "tenant" => mapping.tenant = path,
            _ => mapping.client = path,
        }
        let err = mapping.resolve().unwrap_err();
        assert!(err.starts_with(field), "{field}: {err}");
    }
}

/// `identity.forwardClaims`: the raw claims named, those present, as they
/// are, for people and workloads alike; nothing else.
#[test]
fn the_claims_named_for_forwarding_are_carried_as_they_are() {
    let forward = [
        "department".to_owned(),
        "absent".to_owned(),
        "kubernetes.io".to_owned(),
    ];
    let person = json!({"iss": "https://idp", "sub": "u", "department": {"id": 7}, "secret": "x"});
    let Value::Object(claims) = person else {
        unreachable!()
    };
    let id = mapping(Preset::Keycloak)
        .identity(&claims, 0, &forward)
        .unwrap()
        .identity;
    assert_eq!(Value::Object(id.claims), json!({"department": {"id": 7}}));
    let Value::Object(claims) = service_account_token(|_| {}) else {
        unreachable!()
    };
    let workload = mapping(Preset::Kubernetes)
        .identity(&claims, 0, &forward)
        .unwrap()
        .identity;
    assert_eq!(
        workload.claims["kubernetes.io"]["pod"]["name"],
        "rag-indexer-7d9f-abcde"
    );
    assert_eq!(workload.claims.len(), 1);
}
