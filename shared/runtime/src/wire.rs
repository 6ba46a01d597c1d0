//! Conversions between wire types (`google.type.Date`,
//! `google.protobuf.Timestamp`) and domain and storage types.
//!
//! Instants are stored as microseconds since the Unix epoch (UTC) and civil
//! dates as `YYYY-MM-DD` text, portable across SQLite and PostgreSQL.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use milestones_api::Date;
use prost_types::Timestamp;

/// The wire date for a civil date.
pub fn date_to_wire(d: NaiveDate) -> Date {
    Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    }
}

/// The civil date of a wire date; `Err` says why it is not one. An all-zero
/// date counts as absent (`Ok(None)`).
pub fn date_from_wire(d: Option<&Date>) -> Result<Option<NaiveDate>, String> {
    match d {
        None => Ok(None),
        Some(d) if d.year == 0 && d.month == 0 && d.day == 0 => Ok(None),
        Some(d) => {
            let ok = u32::try_from(d.month)
                .ok()
                .zip(u32::try_from(d.day).ok())
                .and_then(|(m, day)| NaiveDate::from_ymd_opt(d.year, m, day))
                .filter(|date| (1900..=9999).contains(&date.year()));
            ok.map(Some)
                .ok_or_else(|| format!("{}-{:02}-{:02} is not a calendar date", d.year, d.month, d.day))
        }
    }
}

/// The wire timestamp of stored microseconds.
pub fn micros_to_timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Microseconds since the epoch of an instant.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invalid wire dates are refused with the date in the message.
    #[test]
    fn wire_dates_are_checked() {
        let bad = Date {
            year: 2027,
            month: 2,
            day: 30,
        };
        assert!(date_from_wire(Some(&bad)).expect_err("invalid").contains("2027-02-30"));
        assert_eq!(date_from_wire(Some(&Date::default())), Ok(None));
        let good = NaiveDate::from_ymd_opt(2027, 3, 31).expect("valid");
        assert_eq!(date_from_wire(Some(&date_to_wire(good))), Ok(Some(good)));
        assert_eq!(micros_to_timestamp(-1).nanos, 999_999_000);
    }
}
