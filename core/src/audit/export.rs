//! The export format of a trail (docs/AUDIT.md, "Export"): JSON Lines. The first line is
//! a header with the wrapped audit key versions the records name (so that a verifier can
//! have the KMS unwrap them: an export holds no key in the clear); every further line is
//! one stored record with its link and MAC, in sequence order. Anchors are records too.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::chain::{hex, unhex};
use super::verify::StoredRecord;
use crate::error::{Error, Result};
use crate::keycheck::key_check_value;
use crate::kms::{Operation, Request, Response};

pub const FORMAT: &str = "pg_dscsa audit export 1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedAuditKey {
    pub key_id: i32,
    pub key_name: String,
    pub version: i32,
    pub kek_ref: String,
    /// hex
    pub wrapped_key: String,
    /// hex
    pub key_check: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub database: String,
    pub from_seq: Option<i64>,
    pub to_seq: Option<i64>,
    pub exported_at_micros: i64,
    pub audit_keys: Vec<WrappedAuditKey>,
}

impl WrappedAuditKey {
    pub fn new(
        key_id: i32,
        key_name: &str,
        version: i32,
        kek_ref: &str,
        wrapped: &[u8],
        check: &[u8],
    ) -> Self {
        WrappedAuditKey {
            key_id,
            key_name: key_name.into(),
            version,
            kek_ref: kek_ref.into(),
            wrapped_key: hex(wrapped),
            key_check: hex(check),
        }
    }

    /// Has the KMS hook `command` unwrap this key (protocol 1), and checks the result
    /// against the key check value.
    pub fn unwrap_with(
        &self,
        command: &str,
        timeout: std::time::Duration,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let bad = || {
            Error::InvalidArgument(format!(
                "audit key {} in the export is malformed",
                self.key_id
            ))
        };
        let wrapped = unhex(&self.wrapped_key).ok_or_else(bad)?;
        let check = unhex(&self.key_check).ok_or_else(bad)?;
        let request = Request {
            operation: Operation::Unwrap,
            kek: self.kek_ref.clone(),
            key_id: u32::try_from(self.key_id).map_err(|_| bad())?,
            key_name: self.key_name.clone(),
            key_version: u32::try_from(self.version).map_err(|_| bad())?,
            data: Zeroizing::new(wrapped),
        }
        .encode()?;
        let out = crate::hook::run(command, &request, timeout, || {})?;
        let response = Response::decode(Operation::Unwrap, &out)?;
        if key_check_value(&response.data)[..] != check[..] {
            return Err(Error::KeyCheckFailed(self.key_id as u32));
        }
        Ok(response.data)
    }
}

/// Splits an export into its header and records.
pub fn parse(text: &str) -> Result<(Header, Vec<StoredRecord>)> {
    let (header, records) = read(text.as_bytes())?;
    Ok((header, records.collect::<Result<Vec<_>>>()?))
}

/// Reads an export as a stream: the header, then the records one line at a time (a
/// trail kept for years need not fit in memory).
pub fn read<R: std::io::BufRead>(
    reader: R,
) -> Result<(Header, impl Iterator<Item = Result<StoredRecord>>)> {
    let mut lines = reader
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()));
    let io = |e: std::io::Error| Error::InvalidArgument(format!("reading the export: {e}"));
    let (_, first) = lines
        .next()
        .ok_or_else(|| Error::InvalidArgument("the export is empty".into()))?;
    let header: Header = serde_json::from_str(&first.map_err(io)?)
        .map_err(|e| Error::InvalidArgument(format!("export header: {e}")))?;
    if header.format != FORMAT {
        return Err(Error::InvalidArgument(format!(
            "not a pg_dscsa audit export (format \"{}\")",
            header.format
        )));
    }
    let records = lines.map(move |(n, line)| {
        serde_json::from_str(&line.map_err(io)?)
            .map_err(|e| Error::InvalidArgument(format!("export line {n}: {e}")))
    });
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{Event, Record};

    #[test]
    fn an_export_round_trips() {
        let header = Header {
            format: FORMAT.into(),
            database: "erp".into(),
            from_seq: Some(1),
            to_seq: Some(1),
            exported_at_micros: 5,
            audit_keys: vec![WrappedAuditKey::new(
                3,
                "dscsa_audit",
                1,
                "dev:ab",
                &[1, 2],
                &[3; 16],
            )],
        };
        let record = StoredRecord {
            record: Record {
                seq: 1,
                event: Event {
                    origin: "primary".into(),
                    record_type: "access".into(),
                    operation: "decrypt".into(),
                    outcome: "ok".into(),
                    count: 2,
                    ..Default::default()
                },
                mac_key_id: 3,
            },
            prev_mac: [0; 32],
            mac: [7; 32],
        };
        let text = format!(
            "{}\n{}\n",
            serde_json::to_string(&header).expect("header"),
            serde_json::to_string(&record).expect("record")
        );
        let (h, rows) = parse(&text).expect("parse");
        assert_eq!(h, header);
        assert_eq!(rows, vec![record]);
        assert!(parse("").is_err());
        assert!(parse("{\"format\":\"other\"}").is_err());
    }
}
