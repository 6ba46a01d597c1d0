//! Civil dates, date ranges and the fiscal calendar.
//!
//! Periods are civil dates in the tenant's time zone, inclusive at both ends:
//! `FY2027-Q1` with a February fiscal year is 2026-02-01 ..= 2026-04-30.

use chrono::{Datelike, Months, NaiveDate};

/// An inclusive range of civil dates with `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    start: NaiveDate,
    end: NaiveDate,
}

impl DateRange {
    /// A range from `start` to `end` inclusive; `None` if `end < start`.
    pub fn new(start: NaiveDate, end: NaiveDate) -> Option<Self> {
        (start <= end).then_some(Self { start, end })
    }

    pub fn start(&self) -> NaiveDate {
        self.start
    }

    pub fn end(&self) -> NaiveDate {
        self.end
    }

    /// Number of days in the range, counting both ends.
    pub fn days(&self) -> i64 {
        (self.end - self.start).num_days() + 1
    }

    pub fn contains_date(&self, d: NaiveDate) -> bool {
        self.start <= d && d <= self.end
    }

    /// Whether `other` lies entirely inside this range.
    pub fn contains(&self, other: &DateRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    pub fn overlaps(&self, other: &DateRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// Formats a date the way it is stored: `YYYY-MM-DD`, which sorts in date
/// order as text.
pub fn format_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Parses a stored `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// `d` plus `months`, clamped to the end of the month (Jan 31 + 1 = Feb 28).
pub fn add_months(d: NaiveDate, months: u32) -> NaiveDate {
    d.checked_add_months(Months::new(months)).unwrap_or(NaiveDate::MAX)
}

/// Which part of a fiscal year a period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodKind {
    Year,
    /// 1 or 2.
    Half(u8),
    /// 1 to 4.
    Quarter(u8),
    /// 1 to 12, counted from the fiscal year's first month.
    Month(u8),
}

/// A named fiscal period such as `FY2027`, `FY2027-H1`, `FY2027-Q3` or
/// `FY2027-M05`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiscalPeriod {
    /// The fiscal year, named after the calendar year in which it ends.
    pub year: i32,
    pub kind: PeriodKind,
}

impl FiscalPeriod {
    /// Parses a period name (case-insensitive). The error says which forms
    /// are accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not a fiscal period: use FY2027, FY2027-H1, FY2027-Q1 or FY2027-M01");
        let upper = s.trim().to_ascii_uppercase();
        let rest = upper.strip_prefix("FY").ok_or_else(err)?;
        let (year, part) = match rest.split_once('-') {
            Some((y, p)) => (y, Some(p)),
            None => (rest, None),
        };
        if year.len() != 4 {
            return Err(err());
        }
        let year: i32 = year.parse().map_err(|_| err())?;
        if !(1900..=9998).contains(&year) {
            return Err(err());
        }
        let kind = match part {
            None => PeriodKind::Year,
            Some(p) => {
                // By characters, not bytes: `p` may start with a multi-byte
                // character or be empty.
                let mut chars = p.chars();
                let letter = chars.next().ok_or_else(err)?.to_string();
                let num = chars.as_str();
                let n: u8 = num.parse().map_err(|_| err())?;
                match (letter.as_str(), n) {
                    ("H", 1..=2) => PeriodKind::Half(n),
                    ("Q", 1..=4) => PeriodKind::Quarter(n),
                    ("M", 1..=12) if num.len() == 2 => PeriodKind::Month(n),
                    _ => return Err(err()),
                }
            }
        };
        Ok(Self { year, kind })
    }

    /// The period of the same length just before this one.
    pub fn previous(&self) -> FiscalPeriod {
        let (year, kind) = match self.kind {
            PeriodKind::Year => (self.year - 1, PeriodKind::Year),
            PeriodKind::Half(1) => (self.year - 1, PeriodKind::Half(2)),
            PeriodKind::Half(h) => (self.year, PeriodKind::Half(h - 1)),
            PeriodKind::Quarter(1) => (self.year - 1, PeriodKind::Quarter(4)),
            PeriodKind::Quarter(q) => (self.year, PeriodKind::Quarter(q - 1)),
            PeriodKind::Month(1) => (self.year - 1, PeriodKind::Month(12)),
            PeriodKind::Month(m) => (self.year, PeriodKind::Month(m - 1)),
        };
        FiscalPeriod { year, kind }
    }

    /// The period's canonical name.
    pub fn name(&self) -> String {
        match self.kind {
            PeriodKind::Year => format!("FY{}", self.year),
            PeriodKind::Half(h) => format!("FY{}-H{h}", self.year),
            PeriodKind::Quarter(q) => format!("FY{}-Q{q}", self.year),
            PeriodKind::Month(m) => format!("FY{}-M{m:02}", self.year),
        }
    }
}

/// A tenant's fiscal calendar: the month in which its fiscal year starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiscalCalendar {
    start_month: u32,
}

impl Default for FiscalCalendar {
    fn default() -> Self {
        Self { start_month: 1 }
    }
}

impl FiscalCalendar {
    /// A calendar whose year starts in `start_month` (1..=12).
    pub fn new(start_month: u32) -> Option<Self> {
        (1..=12).contains(&start_month).then_some(Self { start_month })
    }

    pub fn start_month(&self) -> u32 {
        self.start_month
    }

    /// The first day of fiscal year `year`.
    fn year_start(&self, year: i32) -> NaiveDate {
        // FY named after the calendar year it ends in: with a January start
        // it is that calendar year, otherwise it starts the year before.
        let calendar_year = if self.start_month == 1 { year } else { year - 1 };
        NaiveDate::from_ymd_opt(calendar_year, self.start_month, 1).unwrap_or(NaiveDate::MIN)
    }

    /// The dates of a fiscal period.
    pub fn range(&self, period: &FiscalPeriod) -> DateRange {
        let year_start = self.year_start(period.year);
        let (offset, months) = match period.kind {
            PeriodKind::Year => (0, 12),
            PeriodKind::Half(h) => (6 * (u32::from(h) - 1), 6),
            PeriodKind::Quarter(q) => (3 * (u32::from(q) - 1), 3),
            PeriodKind::Month(m) => (u32::from(m) - 1, 1),
        };
        let start = add_months(year_start, offset);
        let end = add_months(start, months).pred_opt().unwrap_or(start);
        DateRange { start, end }
    }

    /// The fiscal year that contains `d`.
    pub fn year_of(&self, d: NaiveDate) -> i32 {
        let months_into_calendar = d.month();
        if self.start_month == 1 {
            d.year()
        } else if months_into_calendar >= self.start_month {
            d.year() + 1
        } else {
            d.year()
        }
    }

    /// The fiscal quarter that contains `d`.
    pub fn quarter_of(&self, d: NaiveDate) -> FiscalPeriod {
        let year = self.year_of(d);
        let months_into_year = (d.month() + 12 - self.start_month) % 12;
        // months_into_year is 0..=11, so the quarter is 1..=4.
        let quarter = (months_into_year / 3 + 1) as u8;
        FiscalPeriod {
            year,
            kind: PeriodKind::Quarter(quarter),
        }
    }

    /// The name of the fiscal period whose dates are exactly `range`, if any
    /// (a quarter is preferred over a month-long year, which cannot happen,
    /// so the order only matters for ties that do not exist).
    pub fn name_of(&self, range: &DateRange) -> Option<String> {
        let year = self.year_of(range.start());
        let candidates = std::iter::once(PeriodKind::Year)
            .chain((1..=2).map(PeriodKind::Half))
            .chain((1..=4).map(PeriodKind::Quarter))
            .chain((1..=12).map(PeriodKind::Month));
        candidates
            .map(|kind| FiscalPeriod { year, kind })
            .find(|p| self.range(p) == *range)
            .map(|p| p.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid date")
    }

    /// With a February fiscal year, FY2027 starts in February 2026.
    #[test]
    fn february_fiscal_year() {
        let cal = FiscalCalendar::new(2).expect("valid month");
        let q1 = cal.range(&FiscalPeriod::parse("FY2027-Q1").expect("parses"));
        assert_eq!((q1.start(), q1.end()), (d(2026, 2, 1), d(2026, 4, 30)));
        let q4 = cal.range(&FiscalPeriod::parse("fy2027-q4").expect("parses"));
        assert_eq!((q4.start(), q4.end()), (d(2026, 11, 1), d(2027, 1, 31)));
        let year = cal.range(&FiscalPeriod::parse("FY2027").expect("parses"));
        assert_eq!((year.start(), year.end()), (d(2026, 2, 1), d(2027, 1, 31)));
        assert_eq!(cal.quarter_of(d(2027, 1, 15)).name(), "FY2027-Q4");
        assert_eq!(cal.quarter_of(d(2026, 2, 1)).name(), "FY2027-Q1");
        assert_eq!(cal.name_of(&q4).as_deref(), Some("FY2027-Q4"));
    }

    /// A calendar-year tenant's quarters are the calendar quarters.
    #[test]
    fn calendar_year_quarters() {
        let cal = FiscalCalendar::default();
        let q1 = cal.range(&FiscalPeriod::parse("FY2027-Q1").expect("parses"));
        assert_eq!((q1.start(), q1.end()), (d(2027, 1, 1), d(2027, 3, 31)));
        let m2 = cal.range(&FiscalPeriod::parse("FY2028-M02").expect("parses"));
        assert_eq!((m2.start(), m2.end()), (d(2028, 2, 1), d(2028, 2, 29)));
        assert_eq!(cal.name_of(&m2).as_deref(), Some("FY2028-M02"));
        let odd = DateRange::new(d(2027, 1, 2), d(2027, 3, 31)).expect("ordered");
        assert_eq!(cal.name_of(&odd), None);
    }

    /// Bad period names are refused with a message naming the valid forms.
    #[test]
    fn rejects_bad_period_names() {
        for bad in [
            "",
            "2027-Q1",
            "FY27-Q1",
            "FY2027-Q5",
            "FY2027-H3",
            "FY2027-M1",
            "FY2027-X1",
        ] {
            let err = FiscalPeriod::parse(bad).expect_err(bad);
            assert!(err.contains("FY2027-Q1"), "{err}");
        }
    }

    /// Stepping back crosses fiscal years at the first period.
    #[test]
    fn previous_periods() {
        let back = |s: &str| FiscalPeriod::parse(s).expect("parses").previous().name();
        assert_eq!(back("FY2027-Q1"), "FY2026-Q4");
        assert_eq!(back("FY2027-Q3"), "FY2027-Q2");
        assert_eq!(back("FY2027-H1"), "FY2026-H2");
        assert_eq!(back("FY2027-M01"), "FY2026-M12");
        assert_eq!(back("FY2027"), "FY2026");
    }

    /// Adding months clamps to the end of shorter months.
    #[test]
    fn add_months_clamps() {
        assert_eq!(add_months(d(2027, 1, 31), 1), d(2027, 2, 28));
        assert_eq!(add_months(d(2026, 11, 30), 3), d(2027, 2, 28));
    }
}
