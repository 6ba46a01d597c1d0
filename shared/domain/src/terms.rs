//! The measurable, time-bound terms of a milestone and the rules they obey.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::calendar::DateRange;
use crate::Violations;

/// Most checkpoints a milestone may have.
pub const MAX_CHECKPOINTS: usize = 20;

/// An intermediate target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub display_name: String,
    pub target: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_date: Option<NaiveDate>,
}

/// A milestone's terms: target, stretch, period and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub target: i64,
    pub stretch_target: Option<i64>,
    pub period: DateRange,
    pub checkpoints: Vec<Checkpoint>,
}

impl Terms {
    /// Checks the rules that relate the terms' parts to each other. Field
    /// paths are relative (`target`, `checkpoints[1].target`); the caller
    /// prefixes them with the request's path.
    pub fn validate(&self) -> Violations {
        let mut v = Violations::new();
        if self.target <= 0 {
            v.add("target", format!("must be greater than zero (got {})", self.target));
        }
        if let Some(stretch) = self.stretch_target {
            if stretch <= self.target {
                v.add(
                    "stretch_target",
                    format!("must be greater than the target {} (got {stretch})", self.target),
                );
            }
        }
        if self.checkpoints.len() > MAX_CHECKPOINTS {
            v.add(
                "checkpoints",
                format!("at most {MAX_CHECKPOINTS} checkpoints (got {})", self.checkpoints.len()),
            );
        }
        let mut previous_target: Option<i64> = None;
        let mut previous_due: Option<NaiveDate> = None;
        for (i, c) in self.checkpoints.iter().enumerate() {
            let field = |f: &str| format!("checkpoints[{i}].{f}");
            if c.display_name.chars().count() > 200 {
                v.add(field("display_name"), "must be at most 200 characters");
            }
            if c.target <= 0 {
                v.add(field("target"), format!("must be greater than zero (got {})", c.target));
            } else if c.target > self.target && self.target > 0 {
                v.add(
                    field("target"),
                    format!(
                        "must not exceed the milestone target {} (got {})",
                        self.target, c.target
                    ),
                );
            }
            if let Some(prev) = previous_target {
                if c.target <= prev {
                    v.add(
                        field("target"),
                        format!(
                            "must be greater than the previous checkpoint's {prev} (got {})",
                            c.target
                        ),
                    );
                }
            }
            previous_target = Some(c.target);
            if let Some(due) = c.due_date {
                if !self.period.contains_date(due) {
                    v.add(
                        field("due_date"),
                        format!(
                            "must be within the milestone's period {} to {} (got {due})",
                            self.period.start(),
                            self.period.end()
                        ),
                    );
                }
                if let Some(prev) = previous_due {
                    if due < prev {
                        v.add(
                            field("due_date"),
                            format!("must not be before the previous checkpoint's {prev}"),
                        );
                    }
                }
                previous_due = Some(due);
            }
        }
        v
    }

    /// The names of the parts that differ from `other`, for revisions.
    pub fn changed_fields(&self, other: &Terms) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.target != other.target {
            changed.push("target");
        }
        if self.stretch_target != other.stretch_target {
            changed.push("stretch_target");
        }
        if self.period.start() != other.period.start() {
            changed.push("start_date");
        }
        if self.period.end() != other.period.end() {
            changed.push("end_date");
        }
        if self.checkpoints != other.checkpoints {
            changed.push("checkpoints");
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, m, day).expect("valid date")
    }

    fn terms() -> Terms {
        Terms {
            target: 1000,
            stretch_target: Some(1200),
            period: DateRange::new(d(1, 1), d(3, 31)).expect("ordered"),
            checkpoints: vec![
                Checkpoint {
                    display_name: "a".into(),
                    target: 250,
                    due_date: Some(d(1, 31)),
                },
                Checkpoint {
                    display_name: "b".into(),
                    target: 500,
                    due_date: Some(d(2, 15)),
                },
            ],
        }
    }

    /// Well-formed terms pass.
    #[test]
    fn valid_terms_pass() {
        assert!(terms().validate().is_empty());
    }

    /// Every broken rule is reported with its own field, all at once.
    #[test]
    fn collects_every_violation() {
        let mut t = terms();
        t.target = 400;
        t.stretch_target = Some(300);
        t.checkpoints[0].due_date = Some(d(4, 1));
        t.checkpoints.push(Checkpoint {
            display_name: "c".into(),
            target: 100,
            due_date: None,
        });
        let fields: Vec<String> = t.validate().0.into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            vec![
                "stretch_target",
                "checkpoints[0].due_date",
                "checkpoints[1].target",
                "checkpoints[1].due_date",
                "checkpoints[2].target",
            ]
        );
        let mut z = terms();
        z.target = 0;
        z.stretch_target = None;
        z.checkpoints.clear();
        assert_eq!(z.validate().0[0].field, "target");
    }

    /// Changed fields name exactly what differs.
    #[test]
    fn changed_fields_names_differences() {
        let a = terms();
        let mut b = terms();
        b.target = 1100;
        b.period = DateRange::new(d(1, 1), d(4, 30)).expect("ordered");
        assert_eq!(b.changed_fields(&a), vec!["target", "end_date"]);
        assert!(a.changed_fields(&terms()).is_empty());
    }
}
