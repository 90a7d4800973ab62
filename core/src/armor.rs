//! The text form of an envelope: `dscsa:` followed by unpadded base64url of the bytes.
//!
//! It is what `dscsa.encrypted` prints and parses, so COPY, pg_dump and psql see the same
//! bytes that are stored. Decoding is strict (no padding, no whitespace, canonical
//! trailing bits), so every envelope has exactly one text form and output(input(x)) == x.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::envelope::Envelope;
use crate::error::{Error, Result};

pub const PREFIX: &str = "dscsa:";

pub fn encode(envelope: &[u8]) -> String {
    let mut out = String::with_capacity(PREFIX.len() + envelope.len().div_ceil(3) * 4);
    out.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(envelope, &mut out);
    out
}

/// Parses the text form and checks the envelope structure.
pub fn decode(text: &str) -> Result<Vec<u8>> {
    let body = text.strip_prefix(PREFIX).ok_or(Error::MalformedEnvelope(
        "text does not start with \"dscsa:\"",
    ))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| Error::MalformedEnvelope("text after \"dscsa:\" is not unpadded base64url"))?;
    Envelope::parse(&bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{encode_header, FieldKind, NONCE_LEN, TAG_LEN};

    fn sample() -> Vec<u8> {
        let mut v = encode_header(FieldKind::Lot, 42).to_vec();
        v.extend_from_slice(&[1u8; NONCE_LEN]);
        v.extend_from_slice(b"LOT-A1");
        v.extend_from_slice(&[2u8; TAG_LEN]);
        v
    }

    #[test]
    fn round_trips() {
        let bytes = sample();
        let text = encode(&bytes);
        assert!(text.starts_with(PREFIX));
        assert_eq!(decode(&text).expect("decode"), bytes);
    }

    #[test]
    fn rejects_plaintext_and_noise() {
        for bad in [
            "",
            "SN123456",
            "dscsa:",
            "dscsa:!!!!",
            "DSCSA:AQ",
            " dscsa:AQIAAAAq",
            "\\x0102",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} must be rejected");
        }
        let text = encode(&sample());
        assert!(
            decode(&format!("{text}=")).is_err(),
            "padding is not canonical"
        );
        assert!(decode(&format!("{text}\n")).is_err());
    }
}
