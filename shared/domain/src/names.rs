//! Resource names (AIP-122): `teams/{team}`, `milestones/{milestone}`, ...
//!
//! Ids are server-assigned UUIDv7 strings in their canonical form; the
//! collection prefix says what kind of resource a name is.

/// The collections of resource names in the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Teams,
    Members,
    Memberships,
    Metrics,
    Milestones,
}

impl Collection {
    pub fn prefix(self) -> &'static str {
        match self {
            Collection::Teams => "teams",
            Collection::Members => "members",
            Collection::Memberships => "memberships",
            Collection::Metrics => "metrics",
            Collection::Milestones => "milestones",
        }
    }

    /// The resource name of the id in this collection.
    pub fn name(self, id: &str) -> String {
        format!("{}/{id}", self.prefix())
    }

    /// Parses `prefix/{id}` and returns the id, or a message that says what
    /// form was expected.
    pub fn parse(self, name: &str) -> Result<String, String> {
        let prefix = self.prefix();
        match name.split_once('/') {
            Some((p, id)) if p == prefix && is_valid_id(id) => Ok(id.to_string()),
            _ if name.is_empty() => Err("must not be empty".to_string()),
            _ => Err(format!(
                "must be a resource name of the form {prefix}/{{id}}, got {name:?}"
            )),
        }
    }
}

/// Ids are 1..64 characters of `[A-Za-z0-9_-]`, so names never need escaping.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A milestone's owner: a team or a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Team(String),
    Member(String),
}

impl Owner {
    /// Parses `teams/{id}` or `members/{id}`.
    pub fn parse(name: &str) -> Result<Owner, String> {
        if let Ok(id) = Collection::Teams.parse(name) {
            return Ok(Owner::Team(id));
        }
        if let Ok(id) = Collection::Members.parse(name) {
            return Ok(Owner::Member(id));
        }
        if name.is_empty() {
            return Err("must not be empty".to_string());
        }
        Err(format!("must be teams/{{id}} or members/{{id}}, got {name:?}"))
    }

    pub fn name(&self) -> String {
        match self {
            Owner::Team(id) => Collection::Teams.name(id),
            Owner::Member(id) => Collection::Members.name(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names parse only in their own collection and with a safe id.
    #[test]
    fn parses_names_in_their_collection() {
        assert_eq!(Collection::Teams.parse("teams/abc-1"), Ok("abc-1".to_string()));
        assert!(Collection::Teams.parse("members/abc").is_err());
        assert!(Collection::Teams.parse("teams/").is_err());
        assert!(Collection::Teams.parse("teams/a/b").is_err());
        assert!(Collection::Teams.parse("teams/a'; drop").is_err());
        assert_eq!(Owner::parse("members/x"), Ok(Owner::Member("x".into())));
        assert!(Owner::parse("metrics/x").is_err());
    }
}
