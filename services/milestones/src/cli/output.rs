//! How the command line shows results: aligned tables (with progress bars
//! and colours where the terminal supports them) for people, JSON for
//! scripts.
//!
//! Colours go through `anstream`, which drops them when stdout is not a
//! terminal, when `NO_COLOR` is set, or with `--color never`, and keeps them
//! with `CLICOLOR_FORCE=1` or `--color always`.

use std::io::Write;

use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use milestones_api::goal as g;
use milestones_api::progress as p;
use milestones_api::recognition as r;
use milestones_api::Date;
use serde_json::{json, Value};

/// The output format, chosen with the global `--output` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people: tables, progress bars and colours.
    Table,
    /// JSON for scripts: one document per command (one line per update for
    /// `watch`), field and enum names as in the protos, int64 values as
    /// numbers, dates as YYYY-MM-DD and timestamps in RFC 3339.
    Json,
}

/// Whether to colour the output, chosen with the global `--color` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// When stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always, even into a pipe.
    Always,
    /// Never.
    Never,
}

impl ColorWhen {
    /// Applies the choice to every stream of this process.
    pub fn apply(self) {
        let choice = match self {
            ColorWhen::Auto => anstream::ColorChoice::Auto,
            ColorWhen::Always => anstream::ColorChoice::Always,
            ColorWhen::Never => anstream::ColorChoice::Never,
        };
        choice.write_global();
    }
}

pub const BOLD: Style = Style::new().bold();
pub const DIM: Style = Style::new().dimmed();
pub const GREEN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)));
pub const YELLOW: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));
pub const RED: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)));
pub const CYAN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Cyan)));
pub const MAGENTA: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Magenta)));

/// `text` in `style` (the escapes are dropped later if colour is off).
pub fn paint(style: Style, text: impl std::fmt::Display) -> String {
    format!("{style}{text}{style:#}")
}

/// Writes one line to stdout. A closed pipe (`| head`) ends the output
/// quietly instead of panicking.
pub fn line(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = anstream::stdout();
    writeln!(out, "{text}")
}

/// Prints a JSON document, pretty for one-off results.
pub fn json(value: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    line(text)
}

// === Tables ===

/// One cell: plain text (measured for alignment) and its style.
pub struct Cell {
    text: String,
    style: Style,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            style: Style::new(),
        }
    }

    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Cell {
            text: text.into(),
            style,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::new(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::new(text)
    }
}

/// A table whose columns are as wide as their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers; a header starting with `>` is
    /// right-aligned (for numbers), the `>` is not shown.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn print(&self) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.text.chars().count());
                }
            }
        }
        let mut out = anstream::stdout();
        let last = self.headers.len().saturating_sub(1);
        let header: Vec<Cell> = self.headers.iter().map(|h| Cell::styled(*h, BOLD)).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in row.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.text.chars().count());
                let right = self.right.get(i).copied().unwrap_or(false);
                if i > 0 {
                    text.push_str("  ");
                }
                if right {
                    text.push_str(&" ".repeat(pad));
                }
                text.push_str(&paint(cell.style, &cell.text));
                if !right && i < last {
                    text.push_str(&" ".repeat(pad));
                }
            }
            writeln!(out, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

// === Numbers, bars and dates ===

/// `1234567` as `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// How a metric's values read: the unit and, for money, its currency.
#[derive(Clone, Debug, Default)]
pub struct Unit {
    unit: i32,
    currency: String,
}

impl Unit {
    pub fn of(metric: &g::Metric) -> Self {
        Unit {
            unit: metric.unit,
            currency: metric.currency_code.clone(),
        }
    }

    /// Decimal places of the currency's minor unit (ISO 4217).
    fn decimals(&self) -> u32 {
        match self.currency.as_str() {
            "JPY" | "KRW" | "CLP" | "VND" | "ISK" | "UGX" | "PYG" | "XAF" | "XOF" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
            _ => 2,
        }
    }

    /// A value in the metric's smallest unit, as people read it:
    /// `EUR 12,500.00`, `1,204`, `3h 05m`.
    pub fn format(&self, value: i64) -> String {
        match g::MetricUnit::try_from(self.unit) {
            Ok(g::MetricUnit::Currency) => {
                let decimals = self.decimals();
                let scale = 10_i64.pow(decimals);
                let sign = if value < 0 { "-" } else { "" };
                let whole = thousands((value / scale).abs());
                if decimals == 0 {
                    format!("{} {sign}{whole}", self.currency)
                } else {
                    let frac = (value % scale).abs();
                    format!(
                        "{} {sign}{whole}.{frac:0width$}",
                        self.currency,
                        width = decimals as usize
                    )
                }
            }
            Ok(g::MetricUnit::Seconds) => {
                let sign = if value < 0 { "-" } else { "" };
                let s = value.unsigned_abs();
                if s >= 3600 {
                    format!("{sign}{}h {:02}m", s / 3600, (s % 3600) / 60)
                } else {
                    format!("{sign}{}m {:02}s", s / 60, s % 60)
                }
            }
            _ => thousands(value),
        }
    }
}

/// Basis points as a percentage with one decimal: `8170` → `81.7%`.
pub fn percent(basis_points: i64) -> String {
    format!("{}.{}%", basis_points / 100, (basis_points % 100).abs() / 10)
}

/// A progress bar `width` cells wide, filled to `basis_points` / 10000
/// (capped at full), with eighth-cell precision.
pub fn bar(basis_points: i64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (basis_points.clamp(0, 10_000) as usize * width * 8) / 10_000;
    let full = eighths / 8;
    let mut s = "█".repeat(full);
    if full < width {
        let part = eighths % 8;
        if part > 0 {
            s.push(PARTS[part]);
        } else {
            s.push('░');
        }
        s.push_str(&"░".repeat(width - full - 1));
    }
    s
}

/// The colour of an attainment against the pace expected by now
/// (`pace_basis_points`, the share of the period elapsed): green at or
/// ahead of pace or past the target, yellow from 80 % of the pace, red
/// below; the thresholds of the progress service's status.
pub fn pace_style(attainment_basis_points: i64, pace_basis_points: i64) -> Style {
    if attainment_basis_points >= 10_000 || attainment_basis_points >= pace_basis_points {
        GREEN
    } else if attainment_basis_points * 5 >= pace_basis_points * 4 {
        YELLOW
    } else {
        RED
    }
}

/// The colour of a progress status.
pub fn status_style(status: i32) -> Style {
    match p::ProgressStatus::try_from(status) {
        Ok(p::ProgressStatus::OnTrack | p::ProgressStatus::Achieved) => GREEN,
        Ok(p::ProgressStatus::AtRisk) => YELLOW,
        Ok(p::ProgressStatus::OffTrack | p::ProgressStatus::Missed) => RED,
        _ => DIM,
    }
}

/// An enum value's proto name without its prefix, spaced for people:
/// `PROGRESS_STATUS_ON_TRACK` → `ON TRACK`.
pub fn short(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).replace('_', " ")
}

pub fn to_naive(d: &Date) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(d.year, u32::try_from(d.month).ok()?, u32::try_from(d.day).ok()?)
}

pub fn to_wire(d: NaiveDate) -> Date {
    Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    }
}

/// `YYYY-MM-DD`, or empty when unset.
pub fn date(d: Option<&Date>) -> String {
    d.and_then(to_naive).map(|d| d.to_string()).unwrap_or_default()
}

fn date_json(d: Option<&Date>) -> Value {
    match d.and_then(to_naive) {
        Some(d) => Value::String(d.to_string()),
        None => Value::Null,
    }
}

pub fn to_datetime(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}

/// RFC 3339 in UTC, or empty when unset.
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(to_datetime)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn timestamp_json(t: Option<&prost_types::Timestamp>) -> Value {
    match t.and_then(to_datetime) {
        Some(t) => Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => Value::Null,
    }
}

/// A timestamp as people read it: `2026-11-29 14:03 UTC`.
pub fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(to_datetime)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> Value {
    match E::try_from(value) {
        Ok(e) => Value::String(name(e).to_string()),
        Err(_) => Value::from(value),
    }
}

// === JSON of the API's resources ===

pub fn team_json(t: &g::Team) -> Value {
    json!({
        "name": t.name,
        "display_name": t.display_name,
        "parent": t.parent,
        "create_time": timestamp_json(t.create_time.as_ref()),
    })
}

pub fn member_json(m: &g::Member) -> Value {
    json!({
        "name": m.name,
        "display_name": m.display_name,
        "email": m.email,
        "role": enum_name(m.role, |r: g::MemberRole| r.as_str_name()),
        "subject": m.subject,
        "create_time": timestamp_json(m.create_time.as_ref()),
    })
}

pub fn membership_json(m: &g::Membership) -> Value {
    json!({
        "name": m.name,
        "member": m.member,
        "team": m.team,
        "start_date": date_json(m.start_date.as_ref()),
        "end_date": date_json(m.end_date.as_ref()),
    })
}

pub fn metric_json(m: &g::Metric) -> Value {
    json!({
        "name": m.name,
        "display_name": m.display_name,
        "description": m.description,
        "unit": enum_name(m.unit, |u: g::MetricUnit| u.as_str_name()),
        "currency_code": m.currency_code,
        "aggregation": enum_name(m.aggregation, |a: g::MetricAggregation| a.as_str_name()),
        "allow_negative_values": m.allow_negative_values,
    })
}

pub fn milestone_json(m: &g::Milestone) -> Value {
    json!({
        "name": m.name,
        "display_name": m.display_name,
        "description": m.description,
        "owner": m.owner,
        "metric": m.metric,
        "fiscal_period": m.fiscal_period,
        "start_date": date_json(m.start_date.as_ref()),
        "end_date": date_json(m.end_date.as_ref()),
        "target": m.target,
        "stretch_target": m.stretch_target,
        "checkpoints": m.checkpoints.iter().map(|c| json!({
            "display_name": c.display_name,
            "target": c.target,
            "due_date": date_json(c.due_date.as_ref()),
        })).collect::<Vec<_>>(),
        "parent": m.parent,
        "state": enum_name(m.state, |s: g::MilestoneState| s.as_str_name()),
        "assessment": m.assessment.as_ref().map(|a| json!({
            "realism": enum_name(a.realism, |r: g::Realism| r.as_str_name()),
            "explanation": a.explanation,
        })),
    })
}

pub fn activity_json(a: &p::Activity) -> Value {
    json!({
        "name": a.name,
        "member": a.member,
        "metric": a.metric,
        "value": a.value,
        "occurred_at": timestamp_json(a.occurred_at.as_ref()),
        "source": a.source,
        "external_reference": a.external_reference,
        "credited_amounts": a.credited_amounts.iter().map(|c| json!({
            "member": c.member,
            "amount": c.amount,
        })).collect::<Vec<_>>(),
        "state": enum_name(a.state, |s: p::ActivityState| s.as_str_name()),
        "recorded_by": a.recorded_by,
        "create_time": timestamp_json(a.create_time.as_ref()),
    })
}

pub fn progress_json(p: &p::Progress) -> Value {
    json!({
        "name": p.name,
        "milestone": p.milestone,
        "owner": p.owner,
        "metric": p.metric,
        "fiscal_period": p.fiscal_period,
        "start_date": date_json(p.start_date.as_ref()),
        "end_date": date_json(p.end_date.as_ref()),
        "value": p.value,
        "target": p.target,
        "stretch_target": p.stretch_target,
        "attainment_basis_points": p.attainment_basis_points,
        "status": enum_name(p.status, |s: p::ProgressStatus| s.as_str_name()),
        "expected_value": p.expected_value,
        "projected_value": p.projected_value,
        "checkpoints_reached": p.checkpoints_reached,
        "checkpoints": p.checkpoints.iter().map(|c| json!({
            "index": c.index,
            "display_name": c.display_name,
            "target": c.target,
            "due_date": date_json(c.due_date.as_ref()),
            "reached": c.reached,
            "first_reach_time": timestamp_json(c.first_reach_time.as_ref()),
        })).collect::<Vec<_>>(),
        "elapsed_days": p.elapsed_days,
        "total_days": p.total_days,
        "activity_count": p.activity_count,
        "update_time": timestamp_json(p.update_time.as_ref()),
        "as_of": timestamp_json(p.as_of.as_ref()),
    })
}

pub fn leaderboard_entry_json(e: &p::LeaderboardEntry) -> Value {
    json!({
        "rank": e.rank,
        "member": e.member,
        "display_name": e.display_name,
        "value": e.value,
        "milestone": e.milestone,
        "target": e.target,
        "attainment_basis_points": e.attainment_basis_points,
    })
}

pub fn visibility_name(v: i32) -> Value {
    enum_name(v, |v: r::Visibility| v.as_str_name())
}

pub fn kudos_json(k: &r::Kudos) -> Value {
    json!({
        "name": k.name,
        "giver": k.giver,
        "recipient": k.recipient,
        "milestone": k.milestone,
        "message": k.message,
        "visibility": visibility_name(k.visibility),
        "create_time": timestamp_json(k.create_time.as_ref()),
    })
}

pub fn recognition_json(rec: &r::Recognition) -> Value {
    let (member, team) = match &rec.recipient {
        Some(r::recognition::Recipient::Member(m)) => (m.as_str(), ""),
        Some(r::recognition::Recipient::Team(t)) => ("", t.as_str()),
        None => ("", ""),
    };
    json!({
        "name": rec.name,
        "member": member,
        "team": team,
        "rule": rec.rule,
        "trigger": enum_name(rec.trigger, |t: r::RuleTrigger| t.as_str_name()),
        "badge": rec.badge,
        "points": rec.points,
        "reason": rec.reason,
        "milestone": rec.milestone,
        "metric": rec.metric,
        "visibility": visibility_name(rec.visibility),
        "create_time": timestamp_json(rec.create_time.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Money shows its currency and minor unit; counts get separators.
    #[test]
    fn values_read_like_people_write_them() {
        let eur = Unit {
            unit: g::MetricUnit::Currency as i32,
            currency: "EUR".into(),
        };
        assert_eq!(eur.format(250_000_000), "EUR 2,500,000.00");
        assert_eq!(eur.format(-1_205), "EUR -12.05");
        let jpy = Unit {
            unit: g::MetricUnit::Currency as i32,
            currency: "JPY".into(),
        };
        assert_eq!(jpy.format(1_500), "JPY 1,500");
        let count = Unit {
            unit: g::MetricUnit::Count as i32,
            currency: String::new(),
        };
        assert_eq!(count.format(1_234_567), "1,234,567");
        let secs = Unit {
            unit: g::MetricUnit::Seconds as i32,
            currency: String::new(),
        };
        assert_eq!(secs.format(3_725), "1h 02m");
        assert_eq!(percent(8_170), "81.7%");
    }

    /// Bars fill in eighths, cap at full and never change width.
    #[test]
    fn bars_are_fixed_width() {
        assert_eq!(bar(0, 4), "░░░░");
        assert_eq!(bar(5_000, 4), "██░░");
        assert_eq!(bar(5_625, 4), "██▎░");
        assert_eq!(bar(25_000, 4), "████");
        for bp in (0..12_000).step_by(37) {
            assert_eq!(bar(bp, 10).chars().count(), 10, "at {bp}");
        }
    }

    /// Pace colours follow the progress service's status thresholds.
    #[test]
    fn pace_colours() {
        assert_eq!(pace_style(5_000, 5_000), GREEN);
        assert_eq!(pace_style(4_000, 5_000), YELLOW);
        assert_eq!(pace_style(3_999, 5_000), RED);
        assert_eq!(pace_style(10_000, 10_000), GREEN);
    }
}
