//! GS1 Digital Link URIs: `https://<any host>[/prefix]/01/<gtin>[/22/<cpv>][/10/<lot>][/21/<serial>][?17=YYMMDD&...]`.
//!
//! As GS1's syntax engine reads them: the primary key `/01/` is found scanning from the
//! right (a stray `/21/x` before it belongs to the host's own path); key qualifiers follow
//! in the order 22, 10, 21; AI 21 is never a query attribute, and AI 10 not when it could
//! sit in the path (always, after 01); other numeric query keys are data attributes;
//! non-numeric ones (`linkType`, ...) are ignored. Values are percent-decoded before the
//! length and character-set checks.

use super::element::Found;
use super::{percent_decode, Gs1Error, Result};

fn err(what: &'static str) -> Gs1Error {
    Gs1Error::DigitalLink(what)
}

fn decode(s: &str) -> Result<String> {
    percent_decode(s, Gs1Error::DigitalLink)
}

pub fn parse(uri: &str) -> Result<Found> {
    let after_scheme = uri
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or(err("no scheme"))?;
    // Fragment first, then query.
    let without_fragment = after_scheme.split('#').next().unwrap_or("");
    let (authority_path, query) = match without_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (without_fragment, None),
    };
    let slash = authority_path.find('/').ok_or(Gs1Error::NoGtin)?;
    if slash == 0 {
        return Err(err("no host"));
    }
    let path = &authority_path[slash..];
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    // The primary key, scanning from the right: the last "01" segment followed by a value.
    let start = (0..segments.len().saturating_sub(1))
        .rev()
        .find(|&i| segments[i] == "01")
        .ok_or(Gs1Error::NoGtin)?;
    let mut found = Found::default();
    found.set("01", decode(segments[start + 1])?)?;
    let mut rest = &segments[start + 2..];
    if rest.last() == Some(&"") {
        // A trailing slash.
        rest = &rest[..rest.len() - 1];
    }
    let order = ["22", "10", "21"];
    let mut next_allowed = 0;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return Err(err("a path AI without its value"));
        }
        let position = order.iter().position(|q| *q == rest[0]).ok_or(err(
            "path holds an AI that is not a key qualifier of GTIN (22, 10, 21)",
        ))?;
        if position < next_allowed {
            return Err(err("key qualifiers out of order (22, 10, 21)"));
        }
        next_allowed = position + 1;
        let value = decode(rest[1])?;
        if value.is_empty() {
            return Err(err("empty path value"));
        }
        match order[position] {
            "21" => found.set("21", value)?,
            "10" => found.set("10", value)?,
            _ => {} // 22 (consumer product variant) is not part of the DSCSA identifier
        }
        rest = &rest[2..];
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !key.bytes().all(|b| b.is_ascii_digit()) || key.is_empty() {
            continue; // linkType, context, ... : not GS1 data
        }
        match key {
            "21" => return Err(err("AI 21 is not allowed in the query")),
            "10" => return Err(err("AI 10 belongs in the path after 01")),
            "01" | "22" => return Err(err("a key or key qualifier AI in the query")),
            "17" => found.set("17", decode(value)?)?,
            "11" | "13" | "15" | "16" | "30" | "37" | "240" | "241" | "414" | "417" | "710"
            | "711" | "712" | "713" | "714" | "715" => {}
            _ => return Err(Gs1Error::UnknownAi),
        }
    }
    Ok(found)
}
