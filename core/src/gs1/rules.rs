//! The field rules: GTIN check digit, GS1 character set 82, YYMMDD expiry.

use super::{Gs1Error, Result};

/// Which field a rule applies to (named in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Serial,
    Lot,
    Other,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::Serial => "serial number (AI 21)",
            Field::Lot => "lot (AI 10)",
            Field::Other => "a GS1 field",
        })
    }
}

/// Mod-10 check digit over all digits of `digits` (the last one is the check digit):
/// weights 3, 1, 3, ... from the digit next to the check digit, moving left.
pub fn check_digit_ok(digits: &str) -> bool {
    let d = digits.as_bytes();
    if d.len() < 2 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let (body, check) = d.split_at(d.len() - 1);
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    (10 - sum % 10) % 10 == u32::from(check[0] - b'0')
}

/// A GTIN-8/12/13/14 with a correct check digit, as GTIN-14.
pub fn gtin14(gtin: &str) -> Result<String> {
    if !matches!(gtin.len(), 8 | 12 | 13 | 14) || !gtin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Gs1Error::GtinLength);
    }
    if !check_digit_ok(gtin) {
        return Err(Gs1Error::GtinCheckDigit);
    }
    Ok(zero_padded_14(gtin))
}

/// `digits` (at most 14) left-padded with zeros to 14: a GTIN-8/12/13 as GTIN-14. Built
/// by hand rather than with `format!`: a VRS request pads one at every lookup.
pub fn zero_padded_14(digits: &str) -> String {
    let mut gtin14 = String::with_capacity(14);
    gtin14.extend(std::iter::repeat_n(
        '0',
        14usize.saturating_sub(digits.len()),
    ));
    gtin14.push_str(digits);
    gtin14
}

/// GS1 AI encodable character set 82.
pub fn is_cset82(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'"'
                | b'%'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b';'
                | b'<'
                | b'='
                | b'>'
                | b'?'
                | b'_'
        )
}

/// 1 to 20 characters of character set 82 (serial number, lot).
pub fn cset82(value: &str, field: Field) -> Result<()> {
    if !value.bytes().all(is_cset82) {
        return Err(Gs1Error::Charset(field));
    }
    if value.is_empty() || value.len() > 20 {
        return Err(Gs1Error::Length(field));
    }
    Ok(())
}

fn leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The full year of a two-digit YY: GS1's window of -49..+50 years around `now`.
pub fn full_year(yy: i32, now: i32) -> i32 {
    let century = now - now.rem_euclid(100);
    let mut year = century + yy;
    if year - now >= 51 {
        year -= 100;
    } else if now - year > 49 {
        year += 100;
    }
    year
}

/// YYMMDD with a real month and a real day, or day 00 (the month's last day).
pub fn expiry(value: &str, now_year: i32) -> Result<()> {
    let b = value.as_bytes();
    if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
        return Err(Gs1Error::ExpiryFormat);
    }
    let n = |i: usize| i32::from(b[i] - b'0') * 10 + i32::from(b[i + 1] - b'0');
    let (yy, mm, dd) = (n(0), n(2), n(4));
    if !(1..=12).contains(&mm) {
        return Err(Gs1Error::ExpiryMonth);
    }
    if dd > days_in_month(full_year(yy, now_year), mm) {
        return Err(Gs1Error::ExpiryDay);
    }
    Ok(())
}

/// An expiry as it reaches the database: GS1 YYMMDD (see [`expiry`]), or the ISO
/// YYYY-MM-DD in which pg_dscsa writes a `date` column's value (a real date; no day 00).
pub fn expiry_field(value: &str, now_year: i32) -> Result<()> {
    let b = value.as_bytes();
    let iso_shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !iso_shape {
        return expiry(value, now_year);
    }
    let n = |r: std::ops::Range<usize>| value[r].parse::<i32>().unwrap_or(-1);
    let (year, mm, dd) = (n(0..4), n(5..7), n(8..10));
    if !(1..=12).contains(&mm) {
        return Err(Gs1Error::ExpiryMonth);
    }
    if dd < 1 || dd > days_in_month(year, mm) {
        return Err(Gs1Error::ExpiryDay);
    }
    Ok(())
}

pub(crate) fn days_in_month(year: i32, mm: i32) -> i32 {
    match mm {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The current year (UTC), for the expiry's century window.
pub fn current_year() -> i32 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    year_at(micros)
}

/// The year (UTC) of a time in microseconds since the Unix epoch: the database layer
/// anchors the window at its statement's start, so that its STABLE functions give one
/// answer for the whole statement.
pub fn year_at(unix_micros: i64) -> i32 {
    i32::try_from(crate::audit::utc_month(unix_micros).div_euclid(12)).unwrap_or(i32::MAX)
}
