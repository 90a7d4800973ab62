//! EPC pure-identity URNs (GS1 Tag Data Standard): `urn:epc:id:sgtin:<company prefix>.
//! <indicator + item reference>.<serial>` and `urn:epc:class:lgtin:<prefix>.<ind+item>.<lot>`.
//! The indicator digit moves to the front of the GTIN and the check digit is computed;
//! in the serial or lot exactly seven characters are percent-escaped (`"` %22, `%` %25,
//! `&` %26, `/` %2F, `<` %3C, `>` %3E, `?` %3F); any other escape is invalid TDT syntax.
//! An SSCC identifies a logistic unit, not a product: refused with that reason.

use super::element::Found;
use super::{Gs1Error, Result};

fn err(what: &'static str) -> Gs1Error {
    Gs1Error::Epc(what)
}

/// The GTIN-14 of a company prefix and an indicator + item reference.
fn gtin_of(prefix: &str, item: &str) -> Result<String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(prefix) || !digits(item) {
        return Err(err("company prefix and item reference must be digits"));
    }
    if !(6..=12).contains(&prefix.len()) {
        return Err(err("company prefix must be 6 to 12 digits"));
    }
    if prefix.len() + item.len() != 13 {
        return Err(err(
            "company prefix and item reference must be 13 digits together",
        ));
    }
    let body = format!("{}{}{}", &item[..1], prefix, &item[1..]);
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    Ok(format!("{body}{}", (10 - sum % 10) % 10))
}

/// Decodes the seven TDT escapes (hex in either case); refuses any other escape and the
/// seven characters unescaped.
fn unescape(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or(err("broken percent-escape"))?;
                let c = match hex.to_ascii_uppercase().as_str() {
                    "22" => '"',
                    "25" => '%',
                    "26" => '&',
                    "2F" => '/',
                    "3C" => '<',
                    "3E" => '>',
                    "3F" => '?',
                    _ => return Err(err("percent-escape of a character TDT does not escape")),
                };
                out.push(c);
                i += 3;
            }
            b'"' | b'&' | b'/' | b'<' | b'>' | b'?' => {
                return Err(err("a character that must be percent-escaped"))
            }
            _ => {
                // Multi-byte characters pass through; the CSET 82 check refuses them.
                let c = s[i..].chars().next().ok_or(err("bad character"))?;
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    Ok(out)
}

pub fn parse(urn: &str) -> Result<Found> {
    let lower = urn.to_ascii_lowercase();
    let (kind, body) = if lower.starts_with("urn:epc:id:sgtin:") {
        ("sgtin", &urn[17..])
    } else if lower.starts_with("urn:epc:class:lgtin:") {
        ("lgtin", &urn[20..])
    } else if lower.starts_with("urn:epc:id:sscc:") {
        return Err(err("an SSCC identifies a logistic unit, not a product"));
    } else {
        return Err(err("only sgtin and lgtin URNs carry a product identifier"));
    };
    let mut parts = body.splitn(3, '.');
    let (prefix, item, last) = match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(i), Some(l)) => (p, i, l),
        _ => {
            return Err(err(
                "expected <company prefix>.<item reference>.<serial or lot>",
            ))
        }
    };
    let mut found = Found::default();
    found.set("01", gtin_of(prefix, item)?)?;
    let value = unescape(last)?;
    found.set(if kind == "sgtin" { "21" } else { "10" }, value)?;
    Ok(found)
}
