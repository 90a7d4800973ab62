//! One audit record: what a backend reports (an [`Event`]) plus what the single writer
//! adds (sequence number and MAC key id), and its canonical byte encoding, which is what
//! the chain MAC covers (docs/AUDIT.md, "Record format").

use serde::{Deserialize, Serialize};

/// What a backend hands to the audit queue. Everything about the operation and who did
/// it; never plaintext or key bytes (only key ids, names and versions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// UTC microseconds since 1970-01-01.
    pub ts_micros: i64,
    /// Which server produced it: "primary" or the standby's name (hot standbys forward).
    pub origin: String,
    /// The shared-memory epoch the record was counted in (a new one at every server start):
    /// completeness is checked per origin and epoch (docs/AUDIT.md).
    pub epoch: i64,
    /// access, opened, tamper, key, job, config, worker, anchor (docs/AUDIT.md)
    pub record_type: String,
    pub database: Option<String>,
    pub session_user: Option<String>,
    pub current_user: Option<String>,
    pub client_addr: Option<String>,
    pub application: Option<String>,
    pub backend_pid: Option<i32>,
    /// Start of the backend (microseconds): with the pid it identifies the session.
    pub backend_start: Option<i64>,
    /// The backend's own statement counter: links an `opened` record to its `access`
    /// records.
    pub statement_id: Option<i64>,
    pub query_id: Option<i64>,
    /// Statement text, only where `dscsa.audit_statement_text` allows it.
    pub statement: Option<String>,
    pub operation: String,
    pub key_id: Option<i32>,
    pub key_name: Option<String>,
    pub key_version: Option<i32>,
    pub field_kind: Option<String>,
    pub context: Option<String>,
    pub outcome: String,
    pub count: i64,
    /// Canonical JSON (sorted keys, no whitespace): old/new state, errors, totals.
    pub detail: Option<String>,
}

/// An event as written to the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
    /// Keyring id of the audit key version the MAC was made with.
    pub mac_key_id: i32,
}

pub const ENCODING_MAGIC: &[u8] = b"pg_dscsa audit record v1\0";

fn put(out: &mut Vec<u8>, field: Option<&str>) {
    match field {
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        Some(s) => {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn put_int(out: &mut Vec<u8>, v: Option<i64>) {
    put(out, v.map(|v| v.to_string()).as_deref());
}

impl Record {
    /// The bytes the MAC covers (before the previous row's MAC): a magic string, then
    /// every field in a fixed order as a 4-byte big-endian length and its UTF-8 text
    /// (integers in decimal), 0xFFFFFFFF for NULL.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let e = &self.event;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(ENCODING_MAGIC);
        put_int(&mut out, Some(self.seq));
        put_int(&mut out, Some(e.ts_micros));
        put(&mut out, Some(&e.origin));
        put_int(&mut out, Some(e.epoch));
        put(&mut out, Some(&e.record_type));
        put(&mut out, e.database.as_deref());
        put(&mut out, e.session_user.as_deref());
        put(&mut out, e.current_user.as_deref());
        put(&mut out, e.client_addr.as_deref());
        put(&mut out, e.application.as_deref());
        put_int(&mut out, e.backend_pid.map(i64::from));
        put_int(&mut out, e.backend_start);
        put_int(&mut out, e.statement_id);
        put_int(&mut out, e.query_id);
        put(&mut out, e.statement.as_deref());
        put(&mut out, Some(&e.operation));
        put_int(&mut out, e.key_id.map(i64::from));
        put(&mut out, e.key_name.as_deref());
        put_int(&mut out, e.key_version.map(i64::from));
        put(&mut out, e.field_kind.as_deref());
        put(&mut out, e.context.as_deref());
        put(&mut out, Some(&e.outcome));
        put_int(&mut out, Some(e.count));
        put(&mut out, e.detail.as_deref());
        put_int(&mut out, Some(i64::from(self.mac_key_id)));
        out
    }
}

/// The counters' bucket for databases beyond the shared-memory table's capacity (one per
/// epoch; a database keeps its bucket for the epoch). The verifier adds the records of
/// databases an anchor does not name to it.
pub const OTHER_DATABASES: &str = "(other databases)";

/// What a record counts towards in the completeness counters (docs/AUDIT.md,
/// "Completeness"). Backends add a record's `count` to its counter when they enqueue
/// it, and the verifier adds it again from the trail: both use this one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    Encrypt,
    Decrypt,
    BlindIndex,
    Failed,
    Key,
}

impl Counter {
    pub const ALL: [Counter; 5] = [
        Counter::Encrypt,
        Counter::Decrypt,
        Counter::BlindIndex,
        Counter::Failed,
        Counter::Key,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Encrypt => "encrypt",
            Counter::Decrypt => "decrypt",
            Counter::BlindIndex => "blind_index",
            Counter::Failed => "failed",
            Counter::Key => "key",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn of(record_type: &str, operation: &str) -> Option<Counter> {
        match record_type {
            "access" => match operation {
                "encrypt" | "import" => Some(Counter::Encrypt),
                "decrypt" | "try_decrypt" | "authenticate" => Some(Counter::Decrypt),
                "blind_index" => Some(Counter::BlindIndex),
                _ => None,
            },
            "tamper" => Some(Counter::Failed),
            "key" => Some(Counter::Key),
            _ => None,
        }
    }
}

/// Canonical JSON of a map (keys sorted by serde_json's BTreeMap order, no whitespace).
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k.clone(), sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(seq: i64) -> Record {
        Record {
            seq,
            event: Event {
                ts_micros: 1_796_000_000_000_000 + seq,
                origin: "primary".into(),
                epoch: 3,
                record_type: "access".into(),
                database: Some("erp".into()),
                session_user: Some("vrs".into()),
                current_user: Some("vrs".into()),
                client_addr: Some("127.0.0.1".into()),
                application: Some("pgbench".into()),
                backend_pid: Some(4242),
                backend_start: Some(1_796_000_000_000_000),
                statement_id: Some(7),
                query_id: Some(-123),
                statement: None,
                operation: "decrypt".into(),
                key_id: Some(1),
                key_name: Some("k".into()),
                key_version: Some(1),
                field_kind: Some("serial".into()),
                context: Some("erp.unit.serial".into()),
                outcome: "ok".into(),
                count: 1000,
                detail: Some(r#"{"statement":"completed"}"#.into()),
            },
            mac_key_id: 9,
        }
    }

    #[test]
    fn encoding_separates_null_from_empty_and_fields_from_each_other() {
        let a = sample(1);
        let mut b = a.clone();
        b.event.statement = Some(String::new());
        assert_ne!(a.canonical_bytes(), b.canonical_bytes(), "NULL vs ''");
        let mut c = a.clone();
        c.event.key_name = Some("kerp".into());
        c.event.database = Some(String::new());
        let mut d = a.clone();
        d.event.key_name = Some("k".into());
        assert_ne!(c.canonical_bytes(), d.canonical_bytes());
        assert!(a.canonical_bytes().starts_with(ENCODING_MAGIC));
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let r = sample(5);
        let text = serde_json::to_string(&r).expect("json");
        let back: Record = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
    }

    #[test]
    fn counters_follow_record_type_and_operation() {
        assert_eq!(Counter::of("access", "decrypt"), Some(Counter::Decrypt));
        assert_eq!(Counter::of("access", "try_decrypt"), Some(Counter::Decrypt));
        assert_eq!(Counter::of("access", "import"), Some(Counter::Encrypt));
        assert_eq!(Counter::of("tamper", "decrypt"), Some(Counter::Failed));
        assert_eq!(Counter::of("key", "rotate_key"), Some(Counter::Key));
        assert_eq!(Counter::of("opened", "decrypt"), None);
        assert_eq!(Counter::of("anchor", "anchor"), None);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [ {"z":1,"y":2} ], "c": null}}"#)
                .expect("json");
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#
        );
    }
}
