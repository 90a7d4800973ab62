//! GS1 element strings: bracketed `(01)...(21)...` as printed under a barcode, and
//! unbracketed as a scanner sends them (optional symbology identifier `]d2`, `]Q3`,
//! `]C1`; variable-length fields ended by the group separator 0x1D unless last).

use super::{Gs1Error, Result};

const GS: char = '\u{1d}';

/// What a spelling carried, before validation.
#[derive(Debug, Default)]
pub struct Found {
    pub gtin: Option<String>,
    pub serial: Option<String>,
    pub lot: Option<String>,
    pub expiry: Option<String>,
}

impl Found {
    /// Records AI `ai`'s value; an AI given twice is refused.
    pub fn set(&mut self, ai: &'static str, value: String) -> Result<()> {
        let slot = match ai {
            "01" => &mut self.gtin,
            "21" => &mut self.serial,
            "10" => &mut self.lot,
            "17" => &mut self.expiry,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(Gs1Error::DuplicateAi(ai));
        }
        *slot = Some(value);
        Ok(())
    }
}

/// (AI, fixed length or None for variable, maximum length). The product identifier's
/// AIs and those that commonly sit beside them on a pharmaceutical pack; others are
/// refused as unknown rather than guessed.
const AIS: &[(&str, Option<usize>, usize)] = &[
    ("00", Some(18), 18),
    ("01", Some(14), 14),
    ("02", Some(14), 14),
    ("10", None, 20),
    ("11", Some(6), 6),
    ("12", Some(6), 6),
    ("13", Some(6), 6),
    ("15", Some(6), 6),
    ("16", Some(6), 6),
    ("17", Some(6), 6),
    ("20", Some(2), 2),
    ("21", None, 20),
    ("22", None, 20),
    ("30", None, 8),
    ("37", None, 8),
    ("240", None, 30),
    ("241", None, 30),
    ("414", Some(13), 13),
    ("417", Some(13), 13),
    ("710", None, 20),
    ("711", None, 20),
    ("712", None, 20),
    ("713", None, 20),
    ("714", None, 20),
    ("715", None, 20),
];

fn lookup(ai: &str) -> Option<(&'static str, Option<usize>, usize)> {
    AIS.iter().find(|(a, _, _)| *a == ai).copied()
}

/// The AI at the start of `s` (2 or 3 digits, whichever the table knows).
fn ai_prefix(s: &str) -> Option<(&'static str, Option<usize>, usize)> {
    [2, 3].iter().filter_map(|&n| s.get(..n)).find_map(lookup)
}

fn check_length(ai: &'static str, fixed: Option<usize>, max: usize, value: &str) -> Result<()> {
    let ok = match fixed {
        Some(n) => value.len() == n,
        None => !value.is_empty() && value.len() <= max,
    };
    if ok {
        Ok(())
    } else if ai == "21" || ai == "10" {
        // The field rules name these precisely (length of serial / lot).
        Ok(())
    } else {
        Err(Gs1Error::AiLength(ai))
    }
}

/// `(01)00300010123455(21)SN123(10)A123(17)260331` (a literal `(` in a value: `\(`)
pub fn parse_bracketed(s: &str) -> Result<Found> {
    let mut found = Found::default();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest
            .strip_prefix('(')
            .ok_or(Gs1Error::ElementString("expected '(' before an AI"))?;
        let close = inner
            .find(')')
            .ok_or(Gs1Error::ElementString("unclosed '('"))?;
        let (ai, fixed, max) = lookup(&inner[..close]).ok_or(Gs1Error::UnknownAi)?;
        let after = &inner[close + 1..];
        // The value runs to the next '(' ; a literal '(' in data is written "\(" (as
        // GS1's syntax engine does).
        let mut value = String::new();
        let mut end = after.len();
        let mut chars = after.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if chars.peek().map(|(_, n)| *n) == Some('(') => {
                    value.push('(');
                    chars.next();
                }
                '(' => {
                    end = i;
                    break;
                }
                _ => value.push(c),
            }
        }
        check_length(ai, fixed, max, &value)?;
        found.set(ai, value)?;
        rest = &after[end..];
    }
    Ok(found)
}

/// `]d2` + `0100300010123455` + `21SN123` GS `10A123` GS `17260331`
pub fn parse_unbracketed(s: &str) -> Result<Found> {
    let mut rest = s;
    for prefix in ["]d2", "]Q3", "]C1", "]e0"] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r;
            break;
        }
    }
    if rest.starts_with(']') {
        return Err(Gs1Error::ElementString(
            "symbology identifier is not a GS1 one",
        ));
    }
    // A leading FNC1 sent as GS by some scanners.
    rest = rest.strip_prefix(GS).unwrap_or(rest);
    let mut found = Found::default();
    while !rest.is_empty() {
        let (ai, fixed, max) = ai_prefix(rest).ok_or(Gs1Error::UnknownAi)?;
        let body = &rest[ai.len()..];
        let (value, next) = match fixed {
            Some(n) => {
                let value = body.get(..n).ok_or(Gs1Error::AiLength(ai))?;
                let next = &body[n..];
                // A separator after a fixed-length field is tolerated.
                (value, next.strip_prefix(GS).unwrap_or(next))
            }
            None => match body.find(GS) {
                Some(i) => (&body[..i], &body[i + 1..]),
                None => (body, ""),
            },
        };
        if value.contains(GS) {
            return Err(Gs1Error::ElementString("group separator inside a field"));
        }
        check_length(ai, fixed, max, value)?;
        found.set(ai, value.to_string())?;
        rest = next;
    }
    Ok(found)
}
