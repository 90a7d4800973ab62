//! The audit trail's format, chain and verification (docs/AUDIT.md): pure Rust, shared by
//! the extension (which writes and verifies the trail) and the offline verifier.
//!
//! - `record`: what is recorded, its canonical encoding, the completeness counters
//! - `chain`:  the HMAC chain and audit keys
//! - `verify`: finding the first break in a trail, with anchors and counters
//! - `export`: the JSON Lines export an offline verifier checks

pub mod chain;
pub mod export;
pub mod record;
pub mod verify;

/// Year * 12 + month (0-based) of a UTC time in microseconds since 1970: the trail is
/// partitioned by month. (The civil-from-days algorithm of H. Hinnant.)
pub fn utc_month(micros: i64) -> i64 {
    let days = micros.div_euclid(86_400_000_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    year * 12 + (month - 1)
}

#[cfg(test)]
mod tests {
    use super::utc_month;

    #[test]
    fn months_of_utc_times() {
        // 1970-01-01, 2026-11-30 23:59:59.999999, 2026-12-01, 2024-02-29, 1969-12-31
        assert_eq!(utc_month(0), 1970 * 12);
        assert_eq!(utc_month(1_796_083_199_999_999), 2026 * 12 + 10);
        assert_eq!(utc_month(1_796_083_200_000_000), 2026 * 12 + 11);
        assert_eq!(utc_month(1_709_164_800_000_000), 2024 * 12 + 1);
        assert_eq!(utc_month(-1), 1969 * 12 + 11);
    }
}
