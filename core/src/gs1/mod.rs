//! GS1 product identifiers (issue 10): validation of the four DSCSA fields and one parser
//! for every spelling of the same unit, giving the canonical (GTIN-14, serial, lot, expiry).
//!
//! Spellings: bracketed element strings, unbracketed element strings with 0x1D group
//! separators and an optional symbology identifier (what a 2D scanner sends), GS1 Digital
//! Link URIs on any host, and EPC pure-identity URNs (`sgtin`, `lgtin`), read as the GS1
//! General Specifications, the GS1 Digital Link standard and the EPC Tag Data Standard
//! define them (the test vectors in tests.rs follow their worked examples).
//!
//! The SQL layer calls [`canonical_field`] where identifiers enter (`dscsa_encrypt_gtin`
//! and its siblings, `dscsa.gs1_problems`), [`parse_identifier`] for
//! `dscsa.parse_identifier` and `dscsa.identifier_index`.
//!
//! Errors name the rule that failed, never the value: an identifier is regulated data.

mod digital_link;
mod element;
mod epc;
mod rules;
pub mod verify;

use std::borrow::Cow;

use crate::envelope::FieldKind;

pub use rules::{
    check_digit_ok, cset82, current_year, expiry, expiry_field, gtin14, year_at, zero_padded_14,
    Field,
};

/// One unit (or lot) as the GS1 data it carries, canonical: GTIN-14, decoded serial and
/// lot, expiry as YYMMDD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductIdentifier {
    pub gtin14: String,
    pub serial: Option<String>,
    pub lot: Option<String>,
    pub expiry: Option<String>,
}

/// Why an identifier was refused: the rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gs1Error {
    #[error("GTIN must be 8, 12, 13 or 14 digits")]
    GtinLength,
    #[error("GTIN check digit is wrong")]
    GtinCheckDigit,
    #[error("{0} must be 1 to 20 characters")]
    Length(Field),
    #[error("{0} has a character outside GS1 character set 82")]
    Charset(Field),
    #[error("expiry must be six digits YYMMDD (a date column: YYYY-MM-DD)")]
    ExpiryFormat,
    #[error("expiry month must be 01 to 12")]
    ExpiryMonth,
    #[error("expiry day does not exist in that month (00 means the month's last day)")]
    ExpiryDay,
    #[error("unknown or unsupported GS1 application identifier")]
    UnknownAi,
    #[error("GS1 application identifier {0} appears twice")]
    DuplicateAi(&'static str),
    #[error("GS1 application identifier {0} has the wrong length")]
    AiLength(&'static str),
    #[error("element string is malformed: {0}")]
    ElementString(&'static str),
    #[error("GS1 Digital Link URI is malformed: {0}")]
    DigitalLink(&'static str),
    #[error("EPC URN is malformed: {0}")]
    Epc(&'static str),
    #[error("no GTIN (AI 01) in the identifier")]
    NoGtin,
    #[error("no serial number (AI 21) in the identifier")]
    NoSerial,
    #[error(
        "not a recognised GS1 identifier spelling (element string, Digital Link URI or EPC URN)"
    )]
    Unrecognised,
}

pub type Result<T> = std::result::Result<T, Gs1Error>;

/// Parses any supported spelling of a product identifier; validates every field.
pub fn parse_identifier(text: &str) -> Result<ProductIdentifier> {
    parse_identifier_at(text, rules::current_year())
}

/// As [`parse_identifier`], with the year that anchors the expiry's century window.
pub fn parse_identifier_at(text: &str, year: i32) -> Result<ProductIdentifier> {
    let t = text.trim_matches(|c: char| c == ' ' || c == '\r' || c == '\n' || c == '\t');
    let lower = t.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let parsed = if lower.starts_with("urn:epc:") {
        epc::parse(t)?
    } else if lower.starts_with("https://") || lower.starts_with("http://") {
        digital_link::parse(t)?
    } else if t.starts_with('(') {
        element::parse_bracketed(t)?
    } else if t.starts_with(']')
        || t.starts_with('\u{1d}')
        || t.bytes().next().is_some_and(|b| b.is_ascii_digit())
    {
        element::parse_unbracketed(t)?
    } else {
        return Err(Gs1Error::Unrecognised);
    };
    finish(parsed, year)
}

/// Checks one DSCSA field where it enters the database and returns the form that is
/// stored: a GTIN-8/12/13/14 with a correct check digit becomes GTIN-14; a serial number or
/// lot must be 1 to 20 characters of CSET 82; an expiry must be YYMMDD with a real month and
/// a real day (or day 00), or the ISO date a `date` column is written as. Generic values
/// are not GS1 data and pass unchanged.
pub fn canonical_field(kind: FieldKind, value: &str, year: i32) -> Result<Cow<'_, str>> {
    match kind {
        FieldKind::Gtin => gtin14(value).map(Cow::Owned),
        FieldKind::Serial => cset82(value, Field::Serial).map(|()| Cow::Borrowed(value)),
        FieldKind::Lot => cset82(value, Field::Lot).map(|()| Cow::Borrowed(value)),
        FieldKind::Expiry => expiry_field(value, year).map(|()| Cow::Borrowed(value)),
        FieldKind::Generic => Ok(Cow::Borrowed(value)),
    }
}

/// Validates and canonicalizes what a spelling's parser found.
fn finish(found: element::Found, year: i32) -> Result<ProductIdentifier> {
    let gtin = found.gtin.ok_or(Gs1Error::NoGtin)?;
    let gtin14 = gtin14(&gtin)?;
    if let Some(s) = &found.serial {
        cset82(s, Field::Serial)?;
    }
    if let Some(l) = &found.lot {
        cset82(l, Field::Lot)?;
    }
    if let Some(e) = &found.expiry {
        expiry(e, year)?;
    }
    Ok(ProductIdentifier {
        gtin14,
        serial: found.serial,
        lot: found.lot,
        expiry: found.expiry,
    })
}

/// Percent-decodes `s` (`%XX`, either case); refuses a broken escape or a result that is
/// not UTF-8.
pub(crate) fn percent_decode(s: &str, what: fn(&'static str) -> Gs1Error) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| what("broken percent-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| what("escapes decode to invalid UTF-8"))
}

#[cfg(test)]
mod tests;
