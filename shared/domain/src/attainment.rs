//! Exact integer arithmetic on metric values. No floating point: values are
//! `i64` in the metric's smallest unit and ratios are basis points.

/// 100 % in basis points.
pub const FULL: i64 = 10_000;

/// `value / target` in basis points, rounded toward negative infinity, and
/// saturating at the bounds of `i64`. A non-positive target yields 0, since
/// targets are validated to be positive and a ratio against zero means
/// nothing.
pub fn basis_points(value: i64, target: i64) -> i64 {
    if target <= 0 {
        return 0;
    }
    let scaled = i128::from(value) * i128::from(FULL);
    let q = scaled.div_euclid(i128::from(target));
    i64::try_from(q).unwrap_or(if q > 0 { i64::MAX } else { i64::MIN })
}

/// The sum of `values`, or `None` on overflow, so a sum that does not fit is
/// an error rather than a wrapped number.
pub fn checked_sum(values: impl IntoIterator<Item = i64>) -> Option<i64> {
    values.into_iter().try_fold(0i64, |acc, v| acc.checked_add(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Basis points are exact and floor, even for huge values.
    #[test]
    fn basis_points_are_exact() {
        assert_eq!(basis_points(50, 100), 5_000);
        assert_eq!(basis_points(1, 3), 3_333);
        assert_eq!(basis_points(-1, 3), -3_334);
        assert_eq!(basis_points(150, 100), 15_000);
        assert_eq!(basis_points(i64::MAX, 1), i64::MAX);
        assert_eq!(basis_points(5, 0), 0);
    }

    /// Sums that overflow are reported, not wrapped.
    #[test]
    fn sums_do_not_wrap() {
        assert_eq!(checked_sum([1, 2, 3]), Some(6));
        assert_eq!(checked_sum([i64::MAX, 1]), None);
    }
}
