//! A VRS responder's decision on one unit, on its decrypted fields (docs/GS1.md,
//! "Verification"): does the stored unit carry the requested product identifier, and do
//! its lot and expiry match the request? The SQL layer decrypts and calls these in one
//! function call per unit, instead of a query doing the same with a dozen calls.
//!
//! The comparisons are those of `examples/vrs.sql` before 0.4.0 moved them here: the GTIN
//! compared as GTIN-14, the serial number and the lot exactly (GS1 AIs 21 and 10 are
//! case-sensitive), the expiry as YYMMDD, where a requested day 00 means "the last day of
//! that month" (GS1 General Specifications, AI 17) and matches a stored date on that day.

use crate::blind::normalize;
use crate::envelope::FieldKind;

use super::rules::{days_in_month, full_year};

/// Why a unit whose GTIN and serial number match does not verify: the PI-VRS
/// `verificationFailureReason` codes (the fourth, `No_match_GTIN_Serial`, is the
/// responder's when no unit matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    Lot,
    Expiry,
    LotAndExpiry,
}

impl Mismatch {
    pub fn reason(self) -> &'static str {
        match self {
            Mismatch::Lot => "No_match_GTIN_Serial_Lot",
            Mismatch::Expiry => "No_match_GTIN_Serial_Expiry",
            Mismatch::LotAndExpiry => "No_match_GTIN_Serial_Lot_Expiry",
        }
    }
}

/// Whether a stored serial number is the requested one: exactly (AI 21 is
/// case-sensitive, and the identifier index hashes it as it is).
pub fn serial_matches(stored: &str, requested: &str) -> bool {
    stored == requested
}

/// Whether a stored GTIN-14 is the requested GTIN (8, 12, 13 or 14 digits).
pub fn gtin_matches(stored: &str, requested: &str) -> bool {
    stored == normalize(FieldKind::Gtin, requested)
}

/// Whether a stored lot is the requested one.
pub fn lot_matches(stored: &str, requested: &str) -> bool {
    stored == normalize(FieldKind::Lot, requested)
}

/// Whether a stored expiry (ISO `YYYY-MM-DD` as a `date` column is written, or GS1
/// `YYMMDD`) matches a requested one (`YYMMDD`, day 00 for the month's last day).
/// `now_year` places a two-digit year (GS1's century window) where the stored value has
/// no century.
pub fn expiry_matches(stored: &str, requested: &str, now_year: i32) -> bool {
    let have = normalize(FieldKind::Expiry, stored);
    let want = normalize(FieldKind::Expiry, requested);
    if have == want {
        return true;
    }
    let (Some(want_month), Some(want_day)) = (want.get(..4), want.get(4..)) else {
        return false;
    };
    want_day == "00" && have.get(..4) == Some(want_month) && is_last_day_of_month(stored, now_year)
}

/// Whether a stored expiry is the last day of its month (or GS1 day 00, which says so).
fn is_last_day_of_month(stored: &str, now_year: i32) -> bool {
    let stored = stored.trim_matches(|c: char| c.is_ascii_whitespace());
    let number = |s: Option<&str>| {
        s.filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<i32>().ok())
    };
    let (year, month, day) = match stored.len() {
        10 => (
            number(stored.get(0..4)),
            number(stored.get(5..7)),
            number(stored.get(8..10)),
        ),
        6 => (
            number(stored.get(0..2)).map(|yy| full_year(yy, now_year)),
            number(stored.get(2..4)),
            number(stored.get(4..6)),
        ),
        _ => return false,
    };
    match (year, month, day) {
        (Some(_), Some(1..=12), Some(0)) => stored.len() == 6,
        (Some(y), Some(m @ 1..=12), Some(d)) => d == days_in_month(y, m),
        _ => false,
    }
}

/// What keeps a unit whose identifier matched from verifying, if anything.
pub fn lot_expiry_mismatch(
    stored_lot: &str,
    stored_expiry: &str,
    requested_lot: &str,
    requested_expiry: &str,
    now_year: i32,
) -> Option<Mismatch> {
    match (
        lot_matches(stored_lot, requested_lot),
        expiry_matches(stored_expiry, requested_expiry, now_year),
    ) {
        (true, true) => None,
        (false, true) => Some(Mismatch::Lot),
        (true, false) => Some(Mismatch::Expiry),
        (false, false) => Some(Mismatch::LotAndExpiry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// Any stored and requested text: a verdict, never a panic; equal expiries match.
        #[test]
        fn arbitrary_fields_never_panic(stored in "\\PC{0,12}", requested in "\\PC{0,12}") {
            let _ = lot_expiry_mismatch(&stored, &stored, &requested, &requested, 2026);
            let _ = (gtin_matches(&stored, &requested), serial_matches(&stored, &requested));
            prop_assert!(expiry_matches(&stored, &stored, 2026));
        }

        /// Every real date matches itself as YYMMDD, and day 00 exactly on its month's last day.
        #[test]
        fn dates_match_their_yymmdd_and_day_00_only_on_the_last_day(
            year in 2000i32..2099, month in 1i32..=12, day in 1i32..=31,
        ) {
            prop_assume!(day <= days_in_month(year, month));
            let iso = format!("{year:04}-{month:02}-{day:02}");
            let yymmdd = format!("{:02}{month:02}{day:02}", year % 100);
            let day00 = format!("{:02}{month:02}00", year % 100);
            prop_assert!(expiry_matches(&iso, &yymmdd, 2026));
            prop_assert_eq!(expiry_matches(&iso, &day00, 2026), day == days_in_month(year, month));
        }
    }

    #[test]
    fn the_gtin_matches_in_any_length_and_the_serial_only_exactly() {
        assert!(gtin_matches("00614141000012", "614141000012"));
        assert!(gtin_matches("00614141000012", " 0614141000012 "));
        assert!(gtin_matches("00614141000012", "00614141000012"));
        assert!(!gtin_matches("00614141000012", "00614141000029"));
        assert!(serial_matches("SN1", "SN1"));
        assert!(!serial_matches("SN1", "sn1"));
        assert!(!serial_matches("SN1", "SN10"));
    }

    #[test]
    fn lots_are_case_sensitive() {
        assert!(lot_matches("B1", "B1"));
        assert!(lot_matches("B1", " B1"));
        assert!(!lot_matches("B1", "b1"));
        assert!(!lot_matches("B1", "B10"));
    }

    #[test]
    fn expiry_compares_as_yymmdd_with_day_00_for_the_last_day() {
        assert!(expiry_matches("2027-02-28", "270228", 2026));
        assert!(expiry_matches("270228", "270228", 2026));
        assert!(!expiry_matches("2027-02-27", "270228", 2026));
        // Day 00: the month's last day, leap years included.
        assert!(expiry_matches("2027-02-28", "270200", 2026));
        assert!(expiry_matches("2028-02-29", "280200", 2026));
        assert!(!expiry_matches("2028-02-28", "280200", 2026));
        assert!(expiry_matches("2027-04-30", "270400", 2026));
        assert!(!expiry_matches("2027-04-29", "270400", 2026));
        assert!(!expiry_matches("2027-03-31", "270400", 2026));
        // A stored day 00 is the same statement as a requested day 00, and nothing else.
        assert!(expiry_matches("270200", "270200", 2026));
        assert!(!expiry_matches("270200", "270228", 2026));
        // A stored YYMMDD's century follows the GS1 window.
        assert!(expiry_matches("280229", "280200", 2026));
        // Nonsense never matches, never panics.
        for (stored, requested) in [
            ("", ""),
            ("2027-02-28", ""),
            ("2027-02-28", "27"),
            ("2027-13-31", "271300"),
            ("2027-0a-28", "270a00"),
            ("é027-02-28", "270200"),
            ("2027-02-28", "2702é0"),
        ] {
            assert!(
                !expiry_matches(stored, requested, 2026) || stored == requested,
                "{stored:?} {requested:?}"
            );
        }
    }

    #[test]
    fn the_reason_names_what_differs() {
        let m = |lot, expiry| lot_expiry_mismatch("B1", "2027-02-28", lot, expiry, 2026);
        assert_eq!(m("B1", "270228"), None);
        assert_eq!(m("B1", "270200"), None);
        assert_eq!(
            m("B2", "270228").map(Mismatch::reason),
            Some("No_match_GTIN_Serial_Lot")
        );
        assert_eq!(
            m("B1", "270227").map(Mismatch::reason),
            Some("No_match_GTIN_Serial_Expiry")
        );
        assert_eq!(
            m("B2", "270227").map(Mismatch::reason),
            Some("No_match_GTIN_Serial_Lot_Expiry")
        );
    }
}
