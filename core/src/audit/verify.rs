//! Verifying an audit trail: the chain, the anchors written to the server log, and the
//! completeness counters in the anchor records. Used by `dscsa.audit_verify()` inside the
//! database and by the offline verifier `pg_dscsa_audit_verify` on an export; both report
//! the first break exactly (docs/AUDIT.md, "Verification").

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::chain::{hex, AuditKeys, GENESIS, MAC_LEN};
use super::record::{Counter, Record, OTHER_DATABASES};

/// A record as stored: the record, the MAC of the row before it as the writer saw it,
/// and its own MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    #[serde(flatten)]
    pub record: Record,
    #[serde(with = "hex_bytes")]
    pub prev_mac: [u8; MAC_LEN],
    #[serde(with = "hex_bytes")]
    pub mac: [u8; MAC_LEN],
}

mod hex_bytes {
    use super::MAC_LEN;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; MAC_LEN], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; MAC_LEN], D::Error> {
        let text = String::deserialize(d)?;
        super::super::chain::unhex(&text)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| D::Error::custom("a MAC is 32 bytes of hex"))
    }
}

/// An anchor as the worker logged it, after the anchor record was committed:
///
/// `pg_dscsa audit anchor: seq=<n> mac=<hex> epoch=<n> origin=<name> logged_at=<µs> key=<id> tag=<hex>`
///
/// `tag` authenticates the line with the audit key version `key` (see [`anchor_tag`]):
/// text that merely looks like an anchor (a statement logged with `log_statement`, a
/// line someone wrote into the log) is ignored by the verifiers instead of raising a
/// false alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAnchor {
    pub seq: i64,
    pub mac: [u8; MAC_LEN],
    pub epoch: i64,
    pub origin: String,
    /// When it was logged (microseconds since 1970, UTC).
    pub logged_at: i64,
    pub key_id: i32,
    pub tag: [u8; MAC_LEN],
}

/// HMAC-SHA-256(audit key, "pg_dscsa audit anchor v1" || 0x00 || "seq:mac:epoch:origin:logged_at").
pub fn anchor_tag(
    key: &super::chain::AuditKey,
    seq: i64,
    mac: &[u8; MAC_LEN],
    epoch: i64,
    origin: &str,
    logged_at: i64,
) -> [u8; MAC_LEN] {
    let text = format!("{seq}:{}:{epoch}:{origin}:{logged_at}", hex(mac));
    key.mac_bytes(b"pg_dscsa audit anchor v1\0", text.as_bytes())
}

impl LoggedAnchor {
    /// Finds an anchor in a server log line (None if the line has none; its tag is
    /// checked by the verifier, which has the keys).
    pub fn parse_log_line(line: &str) -> Option<LoggedAnchor> {
        let rest = &line[line.find("pg_dscsa audit anchor:")? + "pg_dscsa audit anchor:".len()..];
        let (mut seq, mut mac, mut epoch, mut origin, mut logged_at, mut key_id, mut tag) =
            (None, None, None, None, None, None, None);
        let bytes32 =
            |v: &str| super::chain::unhex(v).and_then(|b| <[u8; MAC_LEN]>::try_from(b).ok());
        for part in rest.split_whitespace() {
            let Some((name, value)) = part.split_once('=') else {
                continue;
            };
            match name {
                "seq" => seq = value.parse().ok(),
                "mac" => mac = bytes32(value),
                "epoch" => epoch = value.parse().ok(),
                "origin" => origin = Some(value.to_string()),
                "logged_at" => logged_at = value.parse().ok(),
                "key" => key_id = value.parse().ok(),
                "tag" => tag = bytes32(value),
                _ => {}
            }
        }
        Some(LoggedAnchor {
            seq: seq?,
            mac: mac?,
            epoch: epoch?,
            origin: origin?,
            logged_at: logged_at?,
            key_id: key_id?,
            tag: tag?,
        })
    }

    pub fn log_line(
        key: &super::chain::AuditKey,
        seq: i64,
        mac: &[u8; MAC_LEN],
        epoch: i64,
        origin: &str,
        logged_at: i64,
    ) -> String {
        let tag = anchor_tag(key, seq, mac, epoch, origin, logged_at);
        format!(
            "pg_dscsa audit anchor: seq={seq} mac={} epoch={epoch} origin={origin} logged_at={logged_at} key={} tag={}",
            hex(mac),
            key.key_id,
            hex(&tag)
        )
    }

    /// Whether this anchor must be in a snapshot of the trail taken at `snapshot_micros`:
    /// it was logged, so committed, before then. Anchors logged later say nothing about
    /// that snapshot (the trail simply went on).
    pub fn precedes(&self, snapshot_micros: i64) -> bool {
        self.logged_at <= snapshot_micros
    }

    /// Whether the line was written by the holder of the audit key.
    pub fn authentic(&self, keys: &AuditKeys) -> bool {
        keys.get(self.key_id).is_some_and(|k| {
            anchor_tag(
                k,
                self.seq,
                &self.mac,
                self.epoch,
                &self.origin,
                self.logged_at,
            ) == self.tag
        })
    }
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The row with this sequence number was changed (its MAC does not match).
    Edited { seq: i64 },
    /// The row with this sequence number is missing.
    Deleted { seq: i64 },
    /// A row was added at this sequence number.
    Inserted { seq: i64 },
    /// The row at this sequence number holds a record from another position.
    Reordered { seq: i64 },
    /// The server log anchored a later record than the trail holds.
    TruncatedTail { anchored: i64, last: i64 },
    /// A row names an audit key version that is not available.
    UnknownKey { seq: i64, key_id: i32 },
    /// The records between two anchors do not add up to the counters' difference.
    CountMismatch {
        anchor_seq: i64,
        database: String,
        counter: &'static str,
        counted: i64,
        recorded: i64,
    },
    /// An anchor record whose detail cannot be read.
    BadAnchor { seq: i64 },
}

impl Break {
    pub fn kind(&self) -> &'static str {
        match self {
            Break::Edited { .. } => "edited",
            Break::Deleted { .. } => "deleted",
            Break::Inserted { .. } => "inserted",
            Break::Reordered { .. } => "reordered",
            Break::TruncatedTail { .. } => "truncated",
            Break::UnknownKey { .. } => "unknown_key",
            Break::CountMismatch { .. } => "count_mismatch",
            Break::BadAnchor { .. } => "bad_anchor",
        }
    }

    pub fn seq(&self) -> i64 {
        match self {
            Break::Edited { seq }
            | Break::Deleted { seq }
            | Break::Inserted { seq }
            | Break::Reordered { seq }
            | Break::UnknownKey { seq, .. }
            | Break::BadAnchor { seq } => *seq,
            Break::TruncatedTail { last, .. } => last + 1,
            Break::CountMismatch { anchor_seq, .. } => *anchor_seq,
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::Edited { seq } => write!(f, "record {seq} was edited: its MAC does not match"),
            Break::Deleted { seq } => write!(f, "record {seq} is missing (deleted)"),
            Break::Inserted { seq } => write!(f, "a record was inserted at {seq}"),
            Break::Reordered { seq } => {
                write!(f, "record {seq} holds a record from another position (reordered)")
            }
            Break::TruncatedTail { anchored, last } => write!(
                f,
                "truncated: the server log anchored record {anchored}, the trail ends at {last}"
            ),
            Break::UnknownKey { seq, key_id } => {
                write!(f, "record {seq} names audit key id {key_id}, which is not available")
            }
            Break::CountMismatch {
                anchor_seq,
                database,
                counter,
                counted,
                recorded,
            } => write!(
                f,
                "anchor {anchor_seq}: database {database} counted {counted} {counter} operations, the records between the anchors add up to {recorded}"
            ),
            Break::BadAnchor { seq } => write!(f, "anchor record {seq} cannot be read"),
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: usize,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Whether the trail starts at record 1 (else earlier records were detached and the
    /// first row's link is taken as given).
    pub from_genesis: bool,
    pub anchors_in_trail: usize,
    pub anchors_logged_checked: usize,
    /// Anchor-like lines in the logs whose tag did not verify (not written by the worker).
    pub anchors_logged_ignored: usize,
    /// Pairs of anchors whose counts were checked.
    pub intervals_checked: usize,
    pub first_break: Option<Break>,
}

/// Totals an anchor carries: database -> counter name -> count since the epoch began.
type Totals = BTreeMap<String, BTreeMap<String, i64>>;

#[derive(Deserialize)]
struct AnchorDetail {
    totals: Totals,
}

/// Per (origin, epoch): the totals of the last anchor seen, and what the records since it
/// add up to.
#[derive(Default)]
struct Interval {
    baseline: Totals,
    counted: Totals,
    seen_anchor: bool,
}

/// Verifies a trail record by record, in sequence order (`ORDER BY seq`), without
/// holding it in memory: a trail kept for years is verified in one pass.
pub struct Verifier<'k> {
    keys: &'k AuditKeys,
    /// Logged anchors by sequence number (checked as their rows go by).
    logged: BTreeMap<i64, [u8; MAC_LEN]>,
    /// One row of look-ahead: a row is judged once the next one is known.
    held: Option<StoredRecord>,
    expected_prev: Option<[u8; MAC_LEN]>,
    expected_seq: Option<i64>,
    intervals: BTreeMap<(String, i64), Interval>,
    report: Report,
}

impl<'k> Verifier<'k> {
    /// `logged`: the anchors found in the server logs; lines that are not authentic
    /// (see [`LoggedAnchor`]) are ignored and counted in the report.
    pub fn new(keys: &'k AuditKeys, logged: &[LoggedAnchor]) -> Self {
        let authentic: Vec<&LoggedAnchor> = logged.iter().filter(|a| a.authentic(keys)).collect();
        let ignored = logged.len() - authentic.len();
        Verifier {
            keys,
            logged: authentic.iter().map(|a| (a.seq, a.mac)).collect(),
            held: None,
            expected_prev: None,
            expected_seq: None,
            intervals: BTreeMap::new(),
            report: Report {
                records: 0,
                first_seq: None,
                last_seq: None,
                from_genesis: true,
                anchors_in_trail: 0,
                anchors_logged_checked: 0,
                anchors_logged_ignored: ignored,
                intervals_checked: 0,
                first_break: None,
            },
        }
    }

    /// Whether a break was found (the rest need not be read).
    pub fn broken(&self) -> bool {
        self.report.first_break.is_some()
    }

    pub fn push(&mut self, row: StoredRecord) {
        if self.broken() {
            return;
        }
        self.report.records += 1;
        if self.report.first_seq.is_none() {
            self.report.first_seq = Some(row.record.seq);
            self.report.from_genesis = row.record.seq == 1;
        }
        self.report.last_seq = Some(row.record.seq);
        if let Some(held) = self.held.take() {
            self.judge(held, Some(&row));
        }
        self.held = Some(row);
    }

    pub fn finish(mut self) -> Report {
        if let Some(held) = self.held.take() {
            self.judge(held, None);
        }
        if !self.broken() {
            let last = self.report.last_seq.unwrap_or(0);
            if let Some((&anchored, _)) = self.logged.range(last + 1..).next_back() {
                self.report.first_break = Some(Break::TruncatedTail { anchored, last });
            }
        }
        self.report
    }

    fn fail(&mut self, b: Break) {
        self.report.first_break = Some(b);
    }

    fn judge(&mut self, row: StoredRecord, next: Option<&StoredRecord>) {
        if self.broken() {
            return;
        }
        let seq = row.record.seq;
        let expected_seq = *self.expected_seq.get_or_insert(seq);
        let expected_prev =
            *self
                .expected_prev
                .get_or_insert(if seq == 1 { GENESIS } else { row.prev_mac });
        if seq < expected_seq {
            return self.fail(Break::Inserted { seq });
        }
        if seq > expected_seq {
            return self.fail(Break::Deleted { seq: expected_seq });
        }
        let Some(key) = self.keys.get(row.record.mac_key_id) else {
            return self.fail(Break::UnknownKey {
                seq,
                key_id: row.record.mac_key_id,
            });
        };
        let valid = key.mac(&row.record, &row.prev_mac) == row.mac;
        let duplicate_next = next.is_some_and(|n| n.record.seq == seq);
        if row.prev_mac != expected_prev {
            // Linked to some other row: a record moved here from another position (its
            // own link points at the row now after it), a forged row, or an edited link.
            if next.is_some_and(|n| n.mac == row.prev_mac) {
                return self.fail(Break::Reordered { seq });
            }
            if duplicate_next {
                return self.fail(Break::Inserted { seq });
            }
            return self.fail(Break::Edited { seq });
        }
        if !valid {
            if duplicate_next {
                return self.fail(Break::Inserted { seq });
            }
            return self.fail(Break::Edited { seq });
        }
        if let Some(mac) = self.logged.get(&seq) {
            self.report.anchors_logged_checked += 1;
            if *mac != row.mac {
                return self.fail(Break::Edited { seq });
            }
        }
        self.expected_prev = Some(row.mac);
        self.expected_seq = Some(seq + 1);
        if let Some(b) = self.count(&row) {
            self.fail(b);
        }
    }

    fn count(&mut self, row: &StoredRecord) -> Option<Break> {
        let e = &row.record.event;
        let from_genesis = self.report.from_genesis;
        let interval = self
            .intervals
            .entry((e.origin.clone(), e.epoch))
            .or_default();
        if e.record_type == "anchor" {
            self.report.anchors_in_trail += 1;
            let Some(detail) = e
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str::<AnchorDetail>(d).ok())
            else {
                return Some(Break::BadAnchor {
                    seq: row.record.seq,
                });
            };
            // Before the first anchor of an epoch seen in this trail, the baseline is
            // zero only if the trail holds the whole epoch (it starts at record 1); after
            // a detached start the first anchor only sets the baseline.
            // Databases the anchor does not name were counted in the overflow bucket.
            let unnamed: Vec<String> = interval
                .counted
                .keys()
                .filter(|db| !detail.totals.contains_key(*db) && db.as_str() != OTHER_DATABASES)
                .cloned()
                .collect();
            for db in unnamed {
                if let Some(counts) = interval.counted.remove(&db) {
                    let bucket = interval
                        .counted
                        .entry(OTHER_DATABASES.to_string())
                        .or_default();
                    for (counter, n) in counts {
                        *bucket.entry(counter).or_default() += n;
                    }
                }
            }
            if interval.seen_anchor || from_genesis {
                let databases: std::collections::BTreeSet<&String> = detail
                    .totals
                    .keys()
                    .chain(interval.counted.keys())
                    .collect();
                for db in databases {
                    let get = |t: &Totals, c: Counter| {
                        t.get(db)
                            .and_then(|m| m.get(c.name()))
                            .copied()
                            .unwrap_or(0)
                    };
                    for c in Counter::ALL {
                        let counted = get(&detail.totals, c) - get(&interval.baseline, c);
                        let recorded = get(&interval.counted, c);
                        if counted != recorded {
                            return Some(Break::CountMismatch {
                                anchor_seq: row.record.seq,
                                database: db.clone(),
                                counter: c.name(),
                                counted,
                                recorded,
                            });
                        }
                    }
                }
                self.report.intervals_checked += 1;
            }
            interval.baseline = detail.totals;
            interval.counted = Totals::new();
            interval.seen_anchor = true;
            return None;
        }
        if let Some(counter) = Counter::of(&e.record_type, &e.operation) {
            let db = e.database.clone().unwrap_or_default();
            *interval
                .counted
                .entry(db)
                .or_default()
                .entry(counter.name().to_string())
                .or_default() += e.count;
        }
        None
    }
}

/// Verifies `rows` (in sequence order, as `ORDER BY seq` returns them) with `keys`, against
/// the anchors found in the server log.
pub fn verify(rows: &[StoredRecord], keys: &AuditKeys, logged: &[LoggedAnchor]) -> Report {
    let mut v = Verifier::new(keys, logged);
    for row in rows {
        if v.broken() {
            break;
        }
        v.push(row.clone());
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::AuditKey;
    use crate::audit::record::{canonical_json, Event};

    fn keys() -> AuditKeys {
        let mut k = AuditKeys::new();
        k.add(AuditKey::new(1, b"first audit key, 32 bytes long!!"));
        k.add(AuditKey::new(2, b"second audit key after rotation!"));
        k
    }

    fn event(record_type: &str, operation: &str, count: i64) -> Event {
        Event {
            ts_micros: 1,
            origin: "primary".into(),
            epoch: 7,
            record_type: record_type.into(),
            database: Some("erp".into()),
            operation: operation.into(),
            outcome: "ok".into(),
            count,
            ..Default::default()
        }
    }

    /// A trail of `n` records, the way the writer chains them, with anchors every 10
    /// records carrying the running totals, and the audit key rotated at record 30.
    fn trail(n: i64) -> (Vec<StoredRecord>, Vec<LoggedAnchor>) {
        let keys = keys();
        let mut rows = Vec::new();
        let mut logged = Vec::new();
        let mut prev = GENESIS;
        let mut decrypts = 0;
        for seq in 1..=n {
            let event = if seq % 10 == 0 {
                let totals = serde_json::json!({"totals": {"erp": {"decrypt": decrypts}}});
                let mut e = event("anchor", "anchor", 0);
                e.detail = Some(canonical_json(&totals));
                e
            } else {
                decrypts += seq;
                event("access", "decrypt", seq)
            };
            let record = Record {
                seq,
                event,
                mac_key_id: if seq < 30 { 1 } else { 2 },
            };
            let key = keys.get(record.mac_key_id).expect("key");
            let mac = key.mac(&record, &prev);
            if record.event.record_type == "anchor" {
                let line = LoggedAnchor::log_line(key, seq, &mac, 7, "primary", seq);
                logged.push(LoggedAnchor::parse_log_line(&line).expect("anchor line"));
            }
            rows.push(StoredRecord {
                record,
                prev_mac: prev,
                mac,
            });
            prev = mac;
        }
        (rows, logged)
    }

    /// Chains `events` with audit key 1, as the writer would.
    fn chained(events: Vec<Event>) -> Vec<StoredRecord> {
        let keys = keys();
        let mut prev = GENESIS;
        let mut rows = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            let record = Record {
                seq: i as i64 + 1,
                event,
                mac_key_id: 1,
            };
            let mac = keys.get(1).expect("key").mac(&record, &prev);
            rows.push(StoredRecord {
                record,
                prev_mac: prev,
                mac,
            });
            prev = mac;
        }
        rows
    }

    fn anchor_with(totals: serde_json::Value) -> Event {
        let mut e = event("anchor", "anchor", 0);
        e.detail = Some(canonical_json(&serde_json::json!({ "totals": totals })));
        e
    }

    #[test]
    fn databases_beyond_the_counter_table_are_checked_in_the_overflow_bucket() {
        let in_db = |db: &str, n: i64| Event {
            database: Some(db.into()),
            ..event("access", "decrypt", n)
        };
        let events = vec![
            in_db("erp", 3),
            in_db("late_db_1", 4),
            in_db("late_db_2", 5),
            anchor_with(serde_json::json!({
                "erp": {"decrypt": 3},
                OTHER_DATABASES: {"decrypt": 9},
            })),
            in_db("late_db_1", 1),
            anchor_with(serde_json::json!({
                "erp": {"decrypt": 3},
                OTHER_DATABASES: {"decrypt": 10},
            })),
        ];
        let report = verify(&chained(events.clone()), &keys(), &[]);
        assert_eq!(report.first_break, None, "{report:?}");
        assert_eq!(report.intervals_checked, 2);
        // A lost record of an overflowed database is still found.
        let mut short = events;
        short.remove(4);
        let report = verify(&chained(short), &keys(), &[]);
        assert!(
            matches!(
                &report.first_break,
                Some(Break::CountMismatch { database, counted: 1, recorded: 0, .. }) if database == OTHER_DATABASES
            ),
            "{report:?}"
        );
    }

    #[test]
    fn an_untouched_trail_verifies_across_a_key_rotation() {
        let (rows, logged) = trail(55);
        let report = verify(&rows, &keys(), &logged);
        assert_eq!(report.first_break, None, "{report:?}");
        assert_eq!(report.records, 55);
        assert_eq!(report.anchors_in_trail, 5);
        assert_eq!(report.anchors_logged_checked, 5);
        assert_eq!(report.intervals_checked, 5);
    }

    #[test]
    fn an_edit_is_found_at_its_row() {
        let (mut rows, logged) = trail(40);
        rows[16].record.event.count += 1; // seq 17
        assert_eq!(
            verify(&rows, &keys(), &logged).first_break,
            Some(Break::Edited { seq: 17 })
        );
        let (mut rows, _) = trail(40);
        rows[3].record.event.current_user = Some("someone else".into());
        assert_eq!(
            verify(&rows, &keys(), &[]).first_break,
            Some(Break::Edited { seq: 4 })
        );
    }

    #[test]
    fn a_deletion_is_found_at_the_missing_row() {
        let (mut rows, logged) = trail(40);
        rows.remove(21); // seq 22
        assert_eq!(
            verify(&rows, &keys(), &logged).first_break,
            Some(Break::Deleted { seq: 22 })
        );
    }

    #[test]
    fn an_insertion_is_found() {
        let (mut rows, logged) = trail(40);
        let mut forged = rows[11].clone(); // a second record 12
        forged.record.event.count = 999;
        rows.insert(12, forged);
        assert_eq!(
            verify(&rows, &keys(), &logged).first_break,
            Some(Break::Inserted { seq: 12 })
        );
        // The forged copy placed before the original.
        let (mut rows, logged) = trail(40);
        let mut forged = rows[11].clone();
        forged.record.event.count = 999;
        rows.insert(11, forged);
        assert_eq!(
            verify(&rows, &keys(), &logged).first_break,
            Some(Break::Inserted { seq: 12 })
        );
    }

    #[test]
    fn swapped_rows_are_reported_as_reordered() {
        let (mut rows, logged) = trail(40);
        // Swap the contents of records 5 and 6 (their sequence numbers stay in place).
        let (a, b) = (rows[4].clone(), rows[5].clone());
        rows[4] = StoredRecord {
            record: Record { seq: 5, ..b.record },
            ..b
        };
        rows[5] = StoredRecord {
            record: Record { seq: 6, ..a.record },
            ..a
        };
        assert_eq!(
            verify(&rows, &keys(), &logged).first_break,
            Some(Break::Reordered { seq: 5 })
        );
    }

    #[test]
    fn a_truncated_tail_after_an_anchor_is_found() {
        let (mut rows, logged) = trail(45);
        rows.truncate(33); // records 34.. gone, anchor 40 was logged
        assert_eq!(
            verify(&rows, &keys(), &logged).first_break,
            Some(Break::TruncatedTail {
                anchored: 40,
                last: 33
            })
        );
        // Without the log the cut is invisible to the chain: that is what anchors are for.
        assert_eq!(verify(&rows, &keys(), &[]).first_break, None);
    }

    #[test]
    fn counts_that_do_not_add_up_are_found_at_the_anchor() {
        let (mut rows, _) = trail(30);
        // A consistent forgery is impossible without the key, so this simulates the
        // writer losing a record: drop record 15's count but keep the chain valid.
        let keys = keys();
        rows[14].record.event.count = 0;
        let mut prev = rows[13].mac;
        for row in rows.iter_mut().skip(14) {
            row.prev_mac = prev;
            row.mac = keys
                .get(row.record.mac_key_id)
                .expect("key")
                .mac(&row.record, &prev);
            prev = row.mac;
        }
        assert_eq!(
            verify(&rows, &keys, &[]).first_break,
            Some(Break::CountMismatch {
                anchor_seq: 20,
                database: "erp".into(),
                counter: "decrypt",
                counted: 15 + 16 + 17 + 18 + 19 + 11 + 12 + 13 + 14,
                recorded: 16 + 17 + 18 + 19 + 11 + 12 + 13 + 14,
            })
        );
    }

    #[test]
    fn a_trail_whose_start_was_detached_verifies_from_its_first_row() {
        let (rows, logged) = trail(55);
        let rest = &rows[23..]; // records 24..55
        let report = verify(rest, &keys(), &logged);
        assert_eq!(report.first_break, None, "{report:?}");
        assert!(!report.from_genesis);
        assert_eq!(report.anchors_logged_checked, 3); // 30, 40, 50
        assert_eq!(report.intervals_checked, 2); // 30-40, 40-50
    }

    #[test]
    fn an_unknown_key_is_reported() {
        let (rows, logged) = trail(35);
        let mut only_first = AuditKeys::new();
        only_first.add(AuditKey::new(1, b"first audit key, 32 bytes long!!"));
        assert_eq!(
            verify(&rows, &only_first, &logged).first_break,
            Some(Break::UnknownKey { seq: 30, key_id: 2 })
        );
    }

    #[test]
    fn anchors_are_found_in_log_lines_and_authenticated() {
        let keys = keys();
        let key = keys.get(2).expect("key");
        let mac = [0xab; 32];
        let line = format!(
            "2026-11-30 12:00:00.000 UTC [42] LOG:  {}",
            LoggedAnchor::log_line(key, 1234, &mac, 7, "primary", 1_796_000_000_000_000)
        );
        let anchor = LoggedAnchor::parse_log_line(&line).expect("parsed");
        assert_eq!(
            (anchor.seq, anchor.mac, anchor.epoch, anchor.key_id),
            (1234, mac, 7, 2)
        );
        assert_eq!(anchor.origin, "primary");
        assert!(anchor.authentic(&keys));
        assert!(anchor.precedes(1_796_000_000_000_000));
        assert!(!anchor.precedes(1_795_999_999_999_999));
        // Any change of the line, or a line made without the key, is not authentic.
        for forged in [
            line.replace("seq=1234", "seq=1235"),
            line.replace("origin=primary", "origin=standby"),
            line.replace("logged_at=1796000000000000", "logged_at=1796000000000001"),
            line.replace("key=2", "key=1"),
        ] {
            let a = LoggedAnchor::parse_log_line(&forged).expect("parsed");
            assert!(!a.authentic(&keys), "{forged}");
        }
        assert_eq!(
            LoggedAnchor::parse_log_line("LOG: checkpoint starting"),
            None
        );
        assert_eq!(
            LoggedAnchor::parse_log_line("pg_dscsa audit anchor: seq=x mac=00"),
            None
        );
    }

    #[test]
    fn forged_anchor_lines_are_ignored_not_alarms() {
        let (rows, mut logged) = trail(40);
        let genuine = logged.len();
        // Text that looks like an anchor past the end, or for an existing row with
        // another MAC, written by someone without the key (say, in a logged statement).
        let mut past_end = logged[0].clone();
        past_end.seq = 99;
        let mut other_mac = logged[1].clone();
        other_mac.mac = [7; 32];
        logged.push(past_end);
        logged.push(other_mac);
        let report = verify(&rows, &keys(), &logged);
        assert_eq!(report.first_break, None, "{report:?}");
        assert_eq!(report.anchors_logged_ignored, 2);
        assert_eq!(report.anchors_logged_checked, genuine);
    }
}
