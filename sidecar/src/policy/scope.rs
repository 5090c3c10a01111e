//! Whose names a rule uses. User, group, role, tenant, client and agent
//! names are unique only within one issuer, so with several trusted
//! issuers every rule (and quota) that names someone must say which
//! issuer's names they are. A human-only rule needs to know which clients
//! people sign in through, or an exchanged token would pass for a person.

use super::Subjects;

/// What the checks need to know of one trusted issuer.
#[derive(Debug, Clone, Copy)]
pub struct TrustedIssuer<'a> {
    /// The issuer URL, as tokens carry it in `iss`.
    pub issuer: &'a str,
    /// Whether its tokens tell a person acting directly from an agent
    /// holding their token: it lists the clients people sign in through,
    /// or it never issues tokens to people (the `kubernetes` preset).
    pub tells_people_apart: bool,
}

/// Checks that `subjects` names an issuer where it must, and only a
/// trusted one.
pub fn check_subjects(subjects: &Subjects, issuers: &[TrustedIssuer<'_>]) -> Result<(), String> {
    if subjects.any_actor && subjects.agents.is_empty() {
        return Err("subjects.anyActor applies to subjects.agents: list some".into());
    }
    if issuers.is_empty() {
        // Nothing is authenticated at all (a deny-all config).
        return Ok(());
    }
    match &subjects.issuer {
        Some(issuer) if !issuers.iter().any(|t| t.issuer == issuer) => Err(format!(
            "subjects.issuer {issuer:?} is not one of the trusted issuers"
        )),
        None if issuers.len() > 1 && subjects.names_anyone() => Err(
            "subjects.issuer is required with more than one trusted issuer: names are unique only within their issuer"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// Checks that a human-only rule can tell a person from an agent holding
/// their token: every issuer it applies to lists its `userClients`.
pub fn check_human_only(subjects: &Subjects, issuers: &[TrustedIssuer<'_>]) -> Result<(), String> {
    let unknown = issuers
        .iter()
        .filter(|t| subjects.issuer.as_deref().is_none_or(|i| i == t.issuer))
        .find(|t| !t.tells_people_apart);
    match unknown {
        Some(t) => Err(format!(
            "humanOnly needs issuers[].userClients for {:?}: without it, a token another client obtained for a person (token exchange) cannot be told from the person",
            t.issuer
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TrustedIssuer<'static> = TrustedIssuer {
        issuer: "https://a",
        tells_people_apart: true,
    };
    const B: TrustedIssuer<'static> = TrustedIssuer {
        issuer: "https://b",
        tells_people_apart: false,
    };

    #[test]
    fn one_issuer_needs_no_scope_two_do() {
        let staff = Subjects::groups(&["staff"]);
        assert!(check_subjects(&staff, &[A]).is_ok());
        assert!(
            check_subjects(&staff, &[A, B])
                .unwrap_err()
                .contains("subjects.issuer")
        );
        assert!(check_subjects(&staff.clone().of_issuer("https://b"), &[A, B]).is_ok());
        assert!(
            check_subjects(&staff.of_issuer("https://c"), &[A, B])
                .unwrap_err()
                .contains("not one of the trusted issuers")
        );
        let everyone = Subjects {
            any_authenticated: true,
            ..Subjects::default()
        };
        assert!(check_subjects(&everyone, &[A, B]).is_ok());
        let chain_of_nobody = Subjects {
            any_actor: true,
            ..Subjects::groups(&["staff"])
        };
        assert!(
            check_subjects(&chain_of_nobody, &[A])
                .unwrap_err()
                .contains("anyActor")
        );
    }

    #[test]
    fn human_only_needs_the_user_clients_of_each_issuer_it_covers() {
        let admins = Subjects::groups(&["admins"]);
        assert!(check_human_only(&admins, &[A]).is_ok());
        assert!(
            check_human_only(&admins, &[A, B])
                .unwrap_err()
                .contains("https://b")
        );
        assert!(check_human_only(&admins.clone().of_issuer("https://a"), &[A, B]).is_ok());
        assert!(check_human_only(&admins.of_issuer("https://b"), &[A, B]).is_err());
    }
}
