//! Field violations: what a caller must fix, one entry per faulty field.

/// One faulty field of a request: its path (`milestone.target`) and what is
/// wrong with it, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Every violation found in one request. Validation collects them all before
/// answering, so a caller fixes a request in one round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is wrong because of `description`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves the violations of `other` into these.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    /// Moves the violations of `other` into these, with `prefix.` before each
    /// field path.
    pub fn extend_prefixed(&mut self, prefix: &str, other: Violations) {
        for v in other.0 {
            self.add(format!("{prefix}.{}", v.field), v.description);
        }
    }

    /// `Ok(value)` when nothing was found, the violations otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Checks a free-text field's length in characters (not bytes).
    pub fn check_text(&mut self, field: &str, value: &str, min: usize, max: usize) {
        let len = value.chars().count();
        if len < min {
            if min == 1 {
                self.add(field, "must not be empty");
            } else {
                self.add(field, format!("must be at least {min} characters"));
            }
        } else if len > max {
            self.add(field, format!("must be at most {max} characters (got {len})"));
        }
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text length counts characters, so multi-byte names are not cut short.
    #[test]
    fn text_length_counts_characters() {
        let mut v = Violations::new();
        v.check_text("name", "Zürich Ost", 1, 10);
        assert!(v.is_empty());
        v.check_text("name", "", 1, 10);
        v.check_text("name", "abcdefghijk", 1, 10);
        assert_eq!(v.0.len(), 2);
        assert_eq!(v.0[0].description, "must not be empty");
    }
}
