//! The recognition rules as plain functions: which events a trigger reacts
//! to, scopes, streaks, rankings, who may see what, and the sentences
//! people read. No I/O; the consumer and the handlers feed them rows.

use std::collections::{BTreeSet, HashSet};

use chrono::{Datelike, Days, Months, NaiveDate};
use milestones_api::progress::MilestoneEventKind as EventKind;
use milestones_api::recognition::{RuleTrigger, Visibility};

/// The terms of a rule in force at one instant (one row of
/// `rule_versions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTerms {
    pub rule_id: String,
    pub trigger: RuleTrigger,
    pub enabled: bool,
    pub streak_length: u32,
    pub top_n: u32,
    pub scope_team: Option<String>,
    pub scope_metric: Option<String>,
    pub badge_id: Option<String>,
    pub points: i64,
    pub visibility: Visibility,
}

/// The event kind a trigger reacts to.
pub fn reacts_to(trigger: RuleTrigger) -> Option<EventKind> {
    match trigger {
        RuleTrigger::CheckpointReached => Some(EventKind::CheckpointReached),
        RuleTrigger::MilestoneAchieved | RuleTrigger::FirstInTeamToAchieve | RuleTrigger::AchievedNPeriodsInARow => {
            Some(EventKind::TargetReached)
        }
        RuleTrigger::StretchAchieved => Some(EventKind::StretchReached),
        RuleTrigger::TopNAtPeriodClose => Some(EventKind::PeriodEnded),
        RuleTrigger::Unspecified => None,
    }
}

/// Whether the trigger awards members only (never a team owner).
pub fn members_only(trigger: RuleTrigger) -> bool {
    matches!(
        trigger,
        RuleTrigger::FirstInTeamToAchieve | RuleTrigger::TopNAtPeriodClose
    )
}

/// Whether a milestone on `metric_id` whose owner belonged to `owner_teams`
/// (each team and its ancestors) is in the rule's scope.
pub fn in_scope(terms: &RuleTerms, metric_id: &str, owner_teams: &[String]) -> bool {
    let metric_ok = terms.scope_metric.as_deref().is_none_or(|m| m == metric_id);
    let team_ok = terms
        .scope_team
        .as_deref()
        .is_none_or(|t| owner_teams.iter().any(|o| o == t));
    metric_ok && team_ok
}

/// Whether `end` is the last day of its month.
fn is_month_end(d: NaiveDate) -> bool {
    d.checked_add_days(Days::new(1)).is_some_and(|next| next.day() == 1)
}

/// The period of the same length that ends the day before `start`: whole
/// months back when the period is whole months (quarters differ in days),
/// otherwise the same number of days.
pub fn previous_period(start: NaiveDate, end: NaiveDate) -> Option<(NaiveDate, NaiveDate)> {
    if end < start {
        return None;
    }
    let prev_end = start.checked_sub_days(Days::new(1))?;
    if start.day() == 1 && is_month_end(end) {
        let months = (end.year() * 12 + end.month() as i32) - (start.year() * 12 + start.month() as i32) + 1;
        let prev_start = start.checked_sub_months(Months::new(months as u32))?;
        Some((prev_start, prev_end))
    } else {
        let days = (end - start).num_days() + 1;
        let prev_start = start.checked_sub_days(Days::new(days as u64))?;
        Some((prev_start, prev_end))
    }
}

/// Whether the owner also achieved each of the `length - 1` periods right
/// before `(start, end)`, given the periods they achieved.
pub fn streak_holds(start: NaiveDate, end: NaiveDate, achieved: &HashSet<(NaiveDate, NaiveDate)>, length: u32) -> bool {
    let mut period = (start, end);
    for _ in 1..length {
        match previous_period(period.0, period.1) {
            Some(p) if achieved.contains(&p) => period = p,
            _ => return false,
        }
    }
    true
}

/// Standard competition ranks (1, 2, 2, 4) by score, highest first.
pub fn competition_ranks(scores: &[(String, i64)]) -> Vec<(String, u32)> {
    let mut sorted: Vec<&(String, i64)> = scores.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = Vec::with_capacity(sorted.len());
    let mut rank = 0u32;
    let mut previous: Option<i64> = None;
    for (i, (who, score)) in sorted.into_iter().enumerate() {
        if previous != Some(*score) {
            rank = i as u32 + 1;
            previous = Some(*score);
        }
        out.push((who.clone(), rank));
    }
    out
}

/// Who is looking, as far as visibility cares.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// Admins and the suite's services see everything.
    pub sees_all: bool,
    /// The caller's member, when the token's subject links to one.
    pub member: Option<String>,
    /// Whether that member has the MANAGER role.
    pub is_manager: bool,
    /// The teams that member belongs to now.
    pub teams: BTreeSet<String>,
}

/// Who a recognition, kudos or feedback is about.
#[derive(Debug, Clone, Default)]
pub struct Audience {
    /// The recipient member (empty for a team recipient).
    pub member: Option<String>,
    /// Who sees TEAM items besides the chain: the recipient member's teams
    /// now, or a team recipient's subtree.
    pub team_teams: BTreeSet<String>,
    /// The teams whose managers form the recipient's manager chain: the
    /// member's teams now and their ancestors (a team and its ancestors).
    pub chain_teams: BTreeSet<String>,
    /// The giver of kudos.
    pub giver: Option<String>,
}

impl Viewer {
    /// Whether the viewer is in the manager chain of the audience.
    pub fn in_manager_chain(&self, audience: &Audience) -> bool {
        self.is_manager
            && self.member.is_some()
            && self.member != audience.member
            && self.teams.iter().any(|t| audience.chain_teams.contains(t))
    }

    /// Whether the viewer may see an item with `visibility` about
    /// `audience` (admins and services see everything).
    pub fn may_see(&self, visibility: Visibility, audience: &Audience) -> bool {
        if self.sees_all || visibility == Visibility::Public {
            return true;
        }
        let me = self.member.as_deref();
        let personal = me.is_some() && (me == audience.member.as_deref() || me == audience.giver.as_deref());
        if personal || self.in_manager_chain(audience) {
            return true;
        }
        visibility == Visibility::Team && self.teams.iter().any(|t| audience.team_teams.contains(t))
    }

    /// Whether the viewer may see feedback for the audience's member: the
    /// member and their manager chain only, admins included only when in
    /// the chain.
    pub fn may_see_feedback(&self, audience: &Audience) -> bool {
        (self.member.is_some() && self.member == audience.member) || self.in_manager_chain(audience)
    }
}

/// Truncates `text` to at most `max` characters.
pub fn clip(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        text
    } else {
        text.chars().take(max.saturating_sub(1)).chain(['…']).collect()
    }
}

/// What the milestone event says happened, for a recognition's reason.
#[derive(Debug, Clone)]
pub struct Happened<'a> {
    pub milestone: &'a str,
    pub checkpoint_index: Option<i32>,
    pub value: i64,
    pub threshold: i64,
    pub attainment_basis_points: i64,
}

/// The sentence a recognition carries, e.g. `Reached checkpoint 2 of Q1 new
/// business (500 of 500)`.
pub fn reason(trigger: RuleTrigger, h: &Happened<'_>, detail: Option<u32>) -> String {
    let percent = format!(
        "{}.{:02} %",
        h.attainment_basis_points / 100,
        h.attainment_basis_points % 100
    );
    let text = match trigger {
        RuleTrigger::CheckpointReached => format!(
            "Reached checkpoint {} of {} ({} of {})",
            h.checkpoint_index.unwrap_or(0) + 1,
            h.milestone,
            h.value,
            h.threshold
        ),
        RuleTrigger::MilestoneAchieved => format!("Achieved {} ({} of {})", h.milestone, h.value, h.threshold),
        RuleTrigger::StretchAchieved => format!(
            "Reached the stretch target of {} ({} of {})",
            h.milestone, h.value, h.threshold
        ),
        RuleTrigger::FirstInTeamToAchieve => {
            format!("First to achieve {} ({} of {})", h.milestone, h.value, h.threshold)
        }
        RuleTrigger::AchievedNPeriodsInARow => {
            format!("Achieved {} periods in a row with {}", detail.unwrap_or(0), h.milestone)
        }
        RuleTrigger::TopNAtPeriodClose => format!(
            "Ranked #{} at the close of {} ({percent})",
            detail.unwrap_or(0),
            h.milestone
        ),
        RuleTrigger::Unspecified => format!("Recognised for {}", h.milestone),
    };
    clip(text, 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("date")
    }

    fn terms(scope_team: Option<&str>, scope_metric: Option<&str>) -> RuleTerms {
        RuleTerms {
            rule_id: "r".into(),
            trigger: RuleTrigger::MilestoneAchieved,
            enabled: true,
            streak_length: 0,
            top_n: 0,
            scope_team: scope_team.map(str::to_string),
            scope_metric: scope_metric.map(str::to_string),
            badge_id: None,
            points: 10,
            visibility: Visibility::Public,
        }
    }

    /// Each trigger reacts to exactly one event kind; MISSED awards nothing.
    #[test]
    fn triggers_react_to_their_event_kind() {
        assert_eq!(
            reacts_to(RuleTrigger::CheckpointReached),
            Some(EventKind::CheckpointReached)
        );
        assert_eq!(reacts_to(RuleTrigger::StretchAchieved), Some(EventKind::StretchReached));
        assert_eq!(
            reacts_to(RuleTrigger::AchievedNPeriodsInARow),
            Some(EventKind::TargetReached)
        );
        assert_eq!(reacts_to(RuleTrigger::TopNAtPeriodClose), Some(EventKind::PeriodEnded));
        assert_eq!(reacts_to(RuleTrigger::Unspecified), None);
        assert!(members_only(RuleTrigger::TopNAtPeriodClose));
        assert!(!members_only(RuleTrigger::MilestoneAchieved));
    }

    /// A team scope covers the team's subtree through the owner's teams and
    /// their ancestors; a metric scope covers one metric.
    #[test]
    fn scopes_filter_by_subtree_and_metric() {
        let owner_teams = vec!["emea".to_string(), "sales".to_string()];
        assert!(in_scope(&terms(None, None), "arr", &owner_teams));
        assert!(in_scope(&terms(Some("sales"), None), "arr", &owner_teams));
        assert!(!in_scope(&terms(Some("apac"), None), "arr", &owner_teams));
        assert!(in_scope(&terms(Some("emea"), Some("arr")), "arr", &owner_teams));
        assert!(!in_scope(&terms(None, Some("calls")), "arr", &owner_teams));
    }

    /// Quarters step back by whole months whatever their days; other
    /// periods by their number of days.
    #[test]
    fn previous_periods_have_the_same_length() {
        assert_eq!(
            previous_period(d(2026, 4, 1), d(2026, 6, 30)),
            Some((d(2026, 1, 1), d(2026, 3, 31)))
        );
        assert_eq!(
            previous_period(d(2026, 3, 1), d(2026, 3, 31)),
            Some((d(2026, 2, 1), d(2026, 2, 28)))
        );
        assert_eq!(
            previous_period(d(2026, 3, 10), d(2026, 3, 16)),
            Some((d(2026, 3, 3), d(2026, 3, 9)))
        );
        assert_eq!(previous_period(d(2026, 3, 10), d(2026, 3, 9)), None);
    }

    /// A streak needs every immediately preceding period, not just enough
    /// of them.
    #[test]
    fn streaks_need_consecutive_periods() {
        let q1 = (d(2026, 1, 1), d(2026, 3, 31));
        let q2 = (d(2026, 4, 1), d(2026, 6, 30));
        let q4_prev = (d(2025, 10, 1), d(2025, 12, 31));
        let achieved: HashSet<_> = [q1, q4_prev].into_iter().collect();
        assert!(streak_holds(q2.0, q2.1, &achieved, 2));
        assert!(streak_holds(q2.0, q2.1, &achieved, 3));
        assert!(!streak_holds(q2.0, q2.1, &achieved, 4));
        let gap: HashSet<_> = [q4_prev].into_iter().collect();
        assert!(!streak_holds(q2.0, q2.1, &gap, 2));
        assert!(streak_holds(q2.0, q2.1, &HashSet::new(), 1));
    }

    /// Ties share a rank and the next rank skips.
    #[test]
    fn competition_ranking_shares_ties() {
        let ranks = competition_ranks(&[("b".into(), 90), ("a".into(), 120), ("c".into(), 90), ("d".into(), 10)]);
        assert_eq!(
            ranks,
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 2), ("d".into(), 4)]
        );
    }

    fn viewer(member: &str, manager: bool, teams: &[&str]) -> Viewer {
        Viewer {
            sees_all: false,
            member: Some(member.into()),
            is_manager: manager,
            teams: teams.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// Public is for all; team for the recipient's teams and the chain;
    /// private for the recipient, the chain and the giver; admins see all.
    #[test]
    fn visibility_follows_the_contract() {
        let audience = Audience {
            member: Some("ada".into()),
            team_teams: ["emea".to_string()].into_iter().collect(),
            chain_teams: ["emea".to_string(), "sales".to_string()].into_iter().collect(),
            giver: Some("bob".into()),
        };
        let teammate = viewer("cy", false, &["emea"]);
        let outsider = viewer("dan", false, &["apac"]);
        let boss = viewer("eve", true, &["sales"]);
        let other_boss = viewer("fay", true, &["apac"]);
        let giver = viewer("bob", false, &["apac"]);
        let me = viewer("ada", false, &["emea"]);
        for v in [&teammate, &outsider, &boss, &other_boss, &giver, &me] {
            assert!(v.may_see(Visibility::Public, &audience));
        }
        assert!(teammate.may_see(Visibility::Team, &audience));
        assert!(!outsider.may_see(Visibility::Team, &audience));
        assert!(boss.may_see(Visibility::Team, &audience));
        assert!(!teammate.may_see(Visibility::Private, &audience));
        assert!(boss.may_see(Visibility::Private, &audience));
        assert!(!other_boss.may_see(Visibility::Private, &audience));
        assert!(giver.may_see(Visibility::Private, &audience));
        assert!(me.may_see(Visibility::Private, &audience));
        let admin = Viewer {
            sees_all: true,
            ..Viewer::default()
        };
        assert!(admin.may_see(Visibility::Private, &audience));
        // Feedback: the member and the chain, not admins as such.
        assert!(me.may_see_feedback(&audience));
        assert!(boss.may_see_feedback(&audience));
        assert!(!teammate.may_see_feedback(&audience));
        assert!(!admin.may_see_feedback(&audience));
        // A manager is not in their own chain.
        let self_boss = viewer("ada", true, &["emea"]);
        assert!(!self_boss.in_manager_chain(&audience));
    }

    /// Reasons are readable and never longer than 500 characters.
    #[test]
    fn reasons_are_bounded() {
        let long = "x".repeat(800);
        let h = Happened {
            milestone: &long,
            checkpoint_index: Some(1),
            value: 50,
            threshold: 50,
            attainment_basis_points: 5_000,
        };
        assert_eq!(reason(RuleTrigger::CheckpointReached, &h, None).chars().count(), 500);
        let h = Happened {
            milestone: "Q1 new business",
            ..h
        };
        assert_eq!(
            reason(RuleTrigger::CheckpointReached, &h, None),
            "Reached checkpoint 2 of Q1 new business (50 of 50)"
        );
        assert!(reason(RuleTrigger::TopNAtPeriodClose, &h, Some(2)).contains("#2"));
    }
}
