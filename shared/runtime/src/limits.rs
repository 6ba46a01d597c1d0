//! The per-tenant rate limit on writes: a token bucket per tenant
//! (`limits.writes_per_second`, `limits.write_burst`), in the memory of each
//! process. With N replicas a tenant may write up to N times the rate.
//!
//! It is enforced by the [`crate::auth::Authenticator`] right after a token
//! is verified, so the tenant is known and no handler needs to know about
//! it. A write is any RPC whose method does not start with one of
//! [`READ_PREFIXES`]; one call is one write, whatever its batch size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::LimitsSettings;

/// Method name prefixes of the RPCs that change nothing.
pub const READ_PREFIXES: &[&str] = &["Get", "List", "BatchGet", "Watch", "Assess"];

/// The reason in `ErrorInfo` when a tenant's writes are over the limit.
pub const RATE_LIMITED: &str = "RATE_LIMITED";

/// More buckets than this and idle ones are dropped.
const MAX_BUCKETS: usize = 10_000;

/// Whether `method` (the bare RPC name, e.g. `CreateTeam`) writes.
pub fn is_write(method: &str) -> bool {
    !READ_PREFIXES.iter().any(|p| method.starts_with(p))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets, one per tenant.
#[derive(Debug)]
pub struct WriteLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl WriteLimiter {
    /// The limiter `settings` ask for, or `None` when the limit is off.
    pub fn from_settings(settings: &LimitsSettings) -> Option<WriteLimiter> {
        (settings.writes_per_second > 0).then(|| WriteLimiter {
            rate: f64::from(settings.writes_per_second),
            burst: f64::from(settings.write_burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one write from `tenant`'s bucket, or says how long until one
    /// is there.
    pub fn check(&self, tenant: &str) -> Result<(), Duration> {
        self.check_at(tenant, Instant::now())
    }

    fn check_at(&self, tenant: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(tenant) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            // Whole milliseconds, rounded up, so a client that waits this
            // long finds a token.
            Err(Duration::from_millis((wait * 1000.0).ceil() as u64))
        }
    }

    /// The RESOURCE_EXHAUSTED status for a tenant that must wait
    /// `retry_after`: `RetryInfo` with the delay and `ErrorInfo`
    /// (`RATE_LIMITED`, `domain`, the limit in its metadata).
    pub fn status(&self, domain: &str, retry_after: Duration) -> Status {
        let mut details = ErrorDetails::with_retry_info(Some(retry_after));
        details.set_error_info(
            RATE_LIMITED,
            domain,
            HashMap::from([
                ("writes_per_second".to_string(), format!("{}", self.rate)),
                ("write_burst".to_string(), format!("{}", self.burst)),
            ]),
        );
        Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "too many writes for this tenant (at most {} per second, bursts of {}); retry in {} ms",
                self.rate,
                self.burst,
                retry_after.as_millis()
            ),
            details,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32) -> WriteLimiter {
        WriteLimiter::from_settings(&LimitsSettings {
            writes_per_second: rate,
            write_burst: burst,
        })
        .expect("on")
    }

    /// Reads are the Get/List/BatchGet/Watch/Assess methods; the rest write.
    #[test]
    fn writes_are_everything_but_reads() {
        for m in [
            "CreateTeam",
            "RecordActivities",
            "VoidActivity",
            "GiveKudos",
            "ReviewMilestone",
        ] {
            assert!(is_write(m), "{m}");
        }
        for m in [
            "GetTeam",
            "ListTeams",
            "BatchGetProgress",
            "WatchChanges",
            "AssessMilestone",
        ] {
            assert!(!is_write(m), "{m}");
        }
    }

    /// A burst is allowed, then one write per 1/rate seconds; the wait is
    /// the time until the next token; tenants do not share buckets.
    #[test]
    fn bucket_refills_at_the_rate() {
        let l = limiter(2, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("acme", t0).is_ok());
        }
        let wait = l.check_at("acme", t0).expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(l.check_at("globex", t0).is_ok(), "another tenant is unaffected");
        assert!(l.check_at("acme", t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check_at("acme", t0 + Duration::from_millis(500)).is_err());
        // Idle long enough: back to a full burst, not more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check_at("acme", later).is_ok());
        }
        assert!(l.check_at("acme", later).is_err());
    }

    /// Off when the rate is 0.
    #[test]
    fn zero_turns_it_off() {
        assert!(WriteLimiter::from_settings(&LimitsSettings::default()).is_none());
    }

    /// The status carries RetryInfo and ErrorInfo.
    #[test]
    fn status_has_retry_info() {
        let s = limiter(1, 1).status("goal.milestones.dev", Duration::from_millis(250));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let d = s.get_error_details();
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(250))
        );
        let info = d.error_info().expect("error info");
        assert_eq!(info.reason, RATE_LIMITED);
        assert_eq!(info.domain, "goal.milestones.dev");
    }
}
