//! A tenant's settings: the time zone its civil dates live in, its fiscal
//! calendar and its review cadence.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::calendar::{add_months, FiscalCalendar};

/// Settings every tenant has; the defaults hold until an admin changes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    pub time_zone: Tz,
    pub calendar: FiscalCalendar,
    /// 1..=12 months between reviews.
    pub review_cadence_months: u32,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            time_zone: Tz::UTC,
            calendar: FiscalCalendar::default(),
            review_cadence_months: 3,
        }
    }
}

impl TenantSettings {
    /// The civil date at instant `now` in the tenant's zone.
    pub fn today(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.time_zone).date_naive()
    }

    /// When a review falls due if the last one (or the activation) was on
    /// `from`.
    pub fn next_review(&self, from: NaiveDate) -> NaiveDate {
        add_months(from, self.review_cadence_months)
    }
}

/// Parses an IANA time zone name, with a message that says what is expected.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone name such as Europe/Berlin or America/New_York"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// "Today" is the civil date in the tenant's zone, not in UTC.
    #[test]
    fn today_is_in_the_tenant_zone() {
        let s = TenantSettings {
            time_zone: parse_time_zone("America/Los_Angeles").expect("known zone"),
            ..TenantSettings::default()
        };
        let now = Utc.with_ymd_and_hms(2027, 1, 1, 3, 0, 0).single().expect("valid");
        assert_eq!(s.today(now), NaiveDate::from_ymd_opt(2026, 12, 31).expect("valid"));
        assert!(parse_time_zone("Mars/Olympus").is_err());
    }
}
