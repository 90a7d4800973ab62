//! GS1 identifiers in SQL (issue 10, docs/GS1.md): validation where identifiers enter
//! (SQLSTATE 22023 naming the rule, never the value), the superuser-only relaxation, the
//! per-rule report and protect_column's refusal, dscsa.parse_identifier over every
//! spelling, and the product-identifier blind index as a UNIQUE constraint.

use pg_dscsa_itest::{
    connect, count, env, error_text, explain, fresh_db, refused_as_stale_plan, session_with_keys,
    sqlstate, NOBODY, READER, WRITER,
};
use postgres::Client;

#[test]
fn encryption_checks_gs1_rules_and_stores_gtin_14() {
    let (_db, mut c) = fresh_db("gs1_rules");
    let decrypted = |c: &mut postgres::Client, sql: &str| -> String {
        c.query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    };
    assert_eq!(
        decrypted(
            &mut c,
            "SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt_gtin('300010123455'))"
        ),
        "00300010123455",
        "a GTIN-12 is stored as GTIN-14"
    );
    assert_eq!(
        decrypted(
            &mut c,
            "SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt_gtin('12345670'))"
        ),
        "00000012345670"
    );
    assert_eq!(
        decrypted(
            &mut c,
            "SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt_expiry('260200'))"
        ),
        "260200",
        "day 00 is the month's last day"
    );
    let refused: &[(&str, &str, &str)] = &[
        ("gtin", "00300010123454", "check digit"),
        ("gtin", "ABCDEFGH", "8, 12, 13 or 14 digits"),
        ("gtin", "003000101234555", "8, 12, 13 or 14 digits"),
        ("serial", "SN12345678901234567890", "1 to 20 characters"),
        ("serial", "SN 42", "character set 82"),
        ("lot", "LOT#42", "character set 82"),
        ("lot", "", "1 to 20 characters"),
        ("expiry", "261301", "month must be 01 to 12"),
        ("expiry", "270229", "day does not exist"),
        ("expiry", "2026-13-01", "month must be 01 to 12"),
        ("expiry", "31/12/26", "six digits YYMMDD"),
    ];
    for (kind, value, rule) in refused {
        let sql = format!("SELECT dscsa.dscsa_encrypt_{kind}($1)");
        let result = c.query_one(sql.as_str(), &[value]);
        let text = error_text(c.query_one(sql.as_str(), &[value]));
        assert_eq!(sqlstate(result), "22023", "{kind} {value:?}");
        assert!(text.contains(rule), "{kind}: {text}");
        if !value.is_empty() {
            assert!(!text.contains(value), "the error echoes the value: {text}");
        }
        assert!(
            text.contains("dscsa.gs1_problems"),
            "the hint points to the report: {text}"
        );
    }
    // Generic values are not GS1 data.
    assert_eq!(
        decrypted(
            &mut c,
            "SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt('any text at all #1'))"
        ),
        "any text at all #1"
    );
    // A writer's packaging line: the same rules, the same error.
    let mut w = session_with_keys(&_db, WRITER, &["k"]);
    assert_eq!(
        sqlstate(w.batch_execute("SELECT dscsa.dscsa_encrypt_serial('bad serial')")),
        "22023"
    );
}

#[test]
fn only_a_superuser_relaxes_validation() {
    let (db, mut c) = fresh_db("gs1_relax");
    let mut w = session_with_keys(&db, WRITER, &["k"]);
    assert_eq!(
        sqlstate(w.batch_execute("SET dscsa.gs1_validation = off")),
        "42501"
    );
    assert_eq!(
        sqlstate(w.batch_execute("SELECT dscsa.dscsa_encrypt_gtin('legacy-1')")),
        "22023"
    );
    c.batch_execute("SET dscsa.gs1_validation = off")
        .expect("superuser");
    let stored: String = c
        .query_one(
            "SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt_gtin('legacy-1'))",
            &[],
        )
        .expect("relaxed")
        .get(0);
    assert_eq!(stored, "legacy-1", "stored as given, not canonicalized");
    // A superuser may relax it for a role (ALTER ROLE ... SET), never the role itself.
    c.batch_execute("RESET dscsa.gs1_validation")
        .expect("reset");
    assert_eq!(
        sqlstate(c.batch_execute("SELECT dscsa.dscsa_encrypt_gtin('legacy-1')")),
        "22023"
    );
}

#[test]
fn problems_are_counted_per_rule_and_protect_column_refuses_them() {
    let (_db, mut c) = fresh_db("gs1_report");
    c.batch_execute(
        "CREATE TABLE item (id int PRIMARY KEY, gtin text, serial text, best_before date);
         INSERT INTO item SELECT i, CASE WHEN i % 10 = 0 THEN '00300010123454'
                                         WHEN i % 25 = 1 THEN 'n/a' ELSE '00300010123455' END,
                                 CASE WHEN i % 50 = 0 THEN 'SN ' || i ELSE 'SN' || i END,
                                 date '2027-01-31' + i
           FROM generate_series(1, 1000) i;",
    )
    .expect("legacy table");
    let report: Vec<(String, i64)> = c
        .query(
            "SELECT rule, rows FROM dscsa.gs1_problems('item', 'gtin', 'gtin')",
            &[],
        )
        .expect("report")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        report,
        vec![
            ("GTIN check digit is wrong".to_string(), 100),
            ("GTIN must be 8, 12, 13 or 14 digits".to_string(), 40),
        ]
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dscsa.gs1_problems('item', 'best_before', 'expiry')"
        ),
        0,
        "a date column is valid expiry data"
    );
    let refused = c.batch_execute("CALL dscsa.protect_column('item', 'serial', kind => 'serial')");
    let text = error_text(
        c.batch_execute("CALL dscsa.protect_column('item', 'serial', kind => 'serial')"),
    );
    assert_eq!(sqlstate(refused), "22023");
    assert!(
        text.contains("outside GS1 character set 82: 20 rows"),
        "{text}"
    );
    assert!(!text.contains("SN 50"), "no value in the refusal: {text}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'item'::regclass::oid AND attname = 'serial'::name AND atttypid = 'text'::regtype::oid"),
        1,
        "nothing changed"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns"),
        0
    );
    // Fixed, the column protects; a date column protects as expiry.
    c.batch_execute(
        "UPDATE item SET serial = replace(serial, ' ', '-');
         CALL dscsa.protect_column('item', 'serial', kind => 'serial', mode => 'in_place');
         CALL dscsa.protect_column('item', 'best_before', mode => 'in_place');",
    )
    .expect("valid data protects");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM item WHERE dscsa.dscsa_decrypt(serial) = 'SN-50'"
        ),
        1
    );
}

#[test]
fn parse_identifier_reads_every_spelling_of_a_unit() {
    let (_db, mut c) = fresh_db("gs1_parse");
    let spellings = [
        "(01)00300010123455(17)260331(10)A123(21)SN/1",
        "]d201003000101234551726033110A123\u{1d}21SN/1",
        "https://id.example.com/01/00300010123455/10/A123/21/SN%2F1?17=260331",
        "HTTPS://ID.GS1.ORG/01/300010123455/10/A123/21/SN%2f1?17=260331&linkType=gs1:pip",
    ];
    for s in spellings {
        let row = c
            .query_one(
                "SELECT gtin14, serial, lot, expiry FROM dscsa.parse_identifier($1)",
                &[&s],
            )
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        let got: (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(
            got,
            (
                "00300010123455".into(),
                "SN/1".into(),
                "A123".into(),
                "260331".into()
            ),
            "{s}"
        );
    }
    let epc = c
        .query_one("SELECT gtin14, serial, lot FROM dscsa.parse_identifier('urn:epc:id:sgtin:0614141.812345.6789%2F%26')", &[])
        .expect("epc");
    assert_eq!(epc.get::<_, String>(0), "80614141123458");
    assert_eq!(epc.get::<_, String>(1), "6789/&");
    assert_eq!(epc.get::<_, Option<String>>(2), None);
    for (bad, rule) in [
        ("(01)00300010123454(21)SECRET1", "check digit"),
        (
            "https://id.gs1.org/01/00300010123455/21/SECRET1/10/L1",
            "out of order",
        ),
        ("(01)00300010123455(99)SECRET1", "unknown"),
        (
            "(01)00300010123455(21)SECRET1SECRET1SECRET1",
            "1 to 20 characters",
        ),
        ("(01)00300010123455(17)261301(21)SECRET1", "month"),
        ("SECRET1", "not a recognised"),
    ] {
        let text = error_text(c.query_one("SELECT * FROM dscsa.parse_identifier($1)", &[&bad]));
        assert_eq!(
            sqlstate(c.query_one("SELECT * FROM dscsa.parse_identifier($1)", &[&bad])),
            "22023"
        );
        assert!(text.contains(rule), "{bad}: {text}");
        assert!(!text.contains("SECRET1"), "echoes the input: {text}");
    }
}

#[test]
fn identifier_index_is_one_value_per_unit_and_enforces_serial_unique_within_gtin() {
    let (db, mut c) = fresh_db("gs1_pi_index");
    c.batch_execute(
        "SELECT dscsa.create_blind_index_key('pi');
         SELECT dscsa.grant_key('pi', 'dscsa_writer', 'blind_index'), dscsa.grant_key('pi', 'dscsa_reader', 'blind_index');
         SELECT dscsa.load_key('pi');
         SET dscsa.identifier_index_key = 'pi';
         CREATE TABLE unit (id serial PRIMARY KEY, gtin dscsa.gtin_encrypted NOT NULL,
                            serial dscsa.serial_encrypted NOT NULL, pi bytea NOT NULL UNIQUE);
         GRANT SELECT, INSERT ON unit TO dscsa_writer, dscsa_reader;
         GRANT USAGE ON SEQUENCE unit_id_seq TO dscsa_writer;",
    )
    .expect("schema");
    let same: bool = c
        .query_one(
            "SELECT count(DISTINCT x) = 1 FROM unnest(ARRAY[
                 dscsa.identifier_index('300010123455', 'SN/1'),
                 dscsa.identifier_index('(01)00300010123455(21)SN/1'),
                 dscsa.identifier_index('https://example.org/01/00300010123455/21/SN%2F1'),
                 dscsa.identifier_index('urn:epc:id:sgtin:0300010.012345.SN%2F1')]) x",
            &[],
        )
        .expect("spellings")
        .get(0);
    assert!(same, "every spelling of one unit has one index value");
    let other: bool = c
        .query_one(
            "SELECT dscsa.identifier_index('00300010123455', 'SN/2') <> dscsa.identifier_index('00300010123455', 'SN/1')
                AND dscsa.identifier_index('09520123456788', 'SN/1') <> dscsa.identifier_index('00300010123455', 'SN/1')",
            &[],
        )
        .expect("others")
        .get(0);
    assert!(other);

    // A packaging line inserts; the same serial under the same GTIN, spelled otherwise, is refused.
    let mut w = session_with_keys(&db, WRITER, &["k", "pi"]);
    w.batch_execute(
        "SET dscsa.identifier_index_key = 'pi';
         INSERT INTO unit (gtin, serial, pi)
         SELECT dscsa.dscsa_encrypt_gtin(p.gtin14), dscsa.dscsa_encrypt_serial(p.serial), dscsa.identifier_index(p.gtin14, p.serial)
           FROM dscsa.parse_identifier('(01)00300010123455(21)SN/1') p;
         INSERT INTO unit (gtin, serial, pi)
         VALUES (dscsa.dscsa_encrypt_gtin('00300010123455'), dscsa.dscsa_encrypt_serial('SN/2'),
                 dscsa.identifier_index('00300010123455', 'SN/2'));",
    )
    .expect("inserts");
    assert_eq!(
        sqlstate(w.batch_execute(
            "INSERT INTO unit (gtin, serial, pi)
             VALUES (dscsa.dscsa_encrypt_gtin('300010123455'), dscsa.dscsa_encrypt_serial('SN/1'),
                     dscsa.identifier_index('urn:epc:id:sgtin:0300010.012345.SN%2F1'))"
        )),
        "23505",
        "serial unique within its GTIN, whatever the spelling"
    );
    // A lookup by any spelling is one probe of the unique index.
    let mut r = session_with_keys(&db, pg_dscsa_itest::READER, &["k", "pi"]);
    r.batch_execute("SET dscsa.identifier_index_key = 'pi'; SET enable_seqscan = off")
        .expect("settings");
    let plan = explain(
        &mut r,
        "COSTS OFF",
        "SELECT id FROM unit WHERE pi = ANY (dscsa.identifier_index_candidates('https://id.gs1.org/01/00300010123455/21/SN%2F1'))",
    );
    assert!(plan.contains("unit_pi_key"), "{plan}");
    assert_eq!(
        count(&mut r, "SELECT count(*) FROM unit WHERE pi = ANY (dscsa.identifier_index_candidates('https://id.gs1.org/01/00300010123455/21/SN%2F1'))"),
        1
    );
    // Without the key named by the setting: a clear error, not a wrong answer.
    assert_eq!(
        sqlstate(r.batch_execute("SET dscsa.identifier_index_key = 'missing'; SELECT dscsa.identifier_index('00300010123455', 'SN/1')")),
        "55000"
    );
}

/// The server log holds the rule of a refused identifier, never the identifier (with
/// log_statement = all the statement's own text and parameters are logged by choice of
/// the administrator; the error, its detail and its hint are ours).
#[test]
fn validation_errors_leave_no_value_in_the_server_log() {
    let (db, _c) = fresh_db("gs1_log");
    let mut w = connect(&db, "postgres");
    w.batch_execute("SELECT dscsa.load_key('k'); SET dscsa.key_name = 'k'")
        .expect("key");
    let marker = "GS1LOGMARK#7741";
    assert_eq!(
        sqlstate(w.query_one("SELECT dscsa.dscsa_encrypt_serial($1)", &[&marker])),
        "22023"
    );
    w.batch_execute("CREATE TABLE t (s text); INSERT INTO t VALUES ('GS1LOGMARK#7742')")
        .expect("table");
    assert_eq!(
        sqlstate(w.batch_execute(
            "CALL dscsa.protect_column('t', 's', kind => 'lot', mode => 'in_place')"
        )),
        "22023"
    );
    let log = std::fs::read_to_string(format!("{}/server.log", env("DSCSA_TEST_DATADIR")))
        .expect("server log");
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("GS1 validation failed")
                || l.contains("not valid GS1")
                || l.contains("dscsa.gs1_problems")
                || l.contains("character set 82")
        })
        .collect();
    assert!(ours.len() >= 2, "the refusals are logged");
    for line in ours {
        assert!(!line.contains("GS1LOGMARK"), "value in the log: {line}");
    }
}

/// `dscsa.identifier_matches` and `dscsa.verification_failure_reason`: the VRS decision
/// on encrypted fields, with every reason code, GS1's day 00, any GTIN length; only for
/// readers granted the key's decrypt privilege; a modified field raises XX001, never a
/// verdict.
#[test]
fn vrs_verdicts_on_encrypted_fields() {
    let (db, mut su) = fresh_db("gs1_vrs_verdicts");
    su.batch_execute(
        "CREATE TABLE unit (id int PRIMARY KEY, gtin dscsa.gtin_encrypted, serial dscsa.serial_encrypted,
                            lot dscsa.lot_encrypted, expiry dscsa.expiry_encrypted);
         INSERT INTO unit VALUES (1, dscsa.dscsa_encrypt_gtin('614141000012'), dscsa.dscsa_encrypt_serial('SN/1'),
                                 dscsa.dscsa_encrypt_lot('B1'), dscsa.dscsa_encrypt_expiry('2028-02-29'));
         GRANT SELECT, UPDATE ON unit TO dscsa_reader, itest_nobody;",
    )
    .expect("unit");
    let mut reader = session_with_keys(&db, READER, &["k"]);
    let matches = |c: &mut postgres::Client, gtin: &str, serial: &str| -> bool {
        c.query_one(
            "SELECT dscsa.identifier_matches(gtin, serial, $1, $2) FROM unit WHERE id = 1",
            &[&gtin, &serial],
        )
        .expect("identifier_matches")
        .get(0)
    };
    assert!(matches(&mut reader, "00614141000012", "SN/1"));
    assert!(matches(&mut reader, "614141000012", "SN/1"), "GTIN-12");
    assert!(
        !matches(&mut reader, "00614141000012", "sn/1"),
        "serials are case-sensitive"
    );
    assert!(!matches(&mut reader, "00614141000029", "SN/1"));
    assert!(!matches(&mut reader, "not a gtin", "SN/1"));
    let reason = |c: &mut postgres::Client, lot: &str, expiry: &str| -> Option<String> {
        c.query_one(
            "SELECT dscsa.verification_failure_reason(lot, expiry, $1, $2) FROM unit WHERE id = 1",
            &[&lot, &expiry],
        )
        .expect("verification_failure_reason")
        .get(0)
    };
    assert_eq!(reason(&mut reader, "B1", "280229"), None);
    assert_eq!(
        reason(&mut reader, "B1", "280200"),
        None,
        "day 00: the month's last day (leap year)"
    );
    assert_eq!(
        reason(&mut reader, "B2", "280229").as_deref(),
        Some("No_match_GTIN_Serial_Lot")
    );
    assert_eq!(
        reason(&mut reader, "B1", "280228").as_deref(),
        Some("No_match_GTIN_Serial_Expiry")
    );
    assert_eq!(
        reason(&mut reader, "b1", "2802"),
        Some("No_match_GTIN_Serial_Lot_Expiry".to_string())
    );
    // Not a reader: no EXECUTE. A reader whose decrypt grant is revoked: refused per key.
    let mut nobody = connect(&db, NOBODY);
    assert_eq!(
        sqlstate(nobody.query_one(
            "SELECT dscsa.identifier_matches(gtin, serial, '00614141000012', 'SN/1') FROM unit",
            &[]
        )),
        "42501"
    );
    su.batch_execute("SELECT dscsa.revoke_key('k', 'dscsa_reader', 'decrypt')")
        .expect("revoke");
    assert_eq!(
        sqlstate(reader.query_one(
            "SELECT dscsa.verification_failure_reason(lot, expiry, 'B1', '280229') FROM unit",
            &[],
        )),
        "55000",
        "the revocation unloads the key from the reader's session: no verdict after it"
    );
    assert_eq!(
        sqlstate(reader.execute("SELECT dscsa.load_key('k')", &[])),
        "42501",
        "nor can it be loaded again"
    );
    su.batch_execute("SELECT dscsa.grant_key('k', 'dscsa_reader', 'decrypt')")
        .expect("grant");
    // A modified lot raises, and so does a modified GTIN even when the serial matches.
    su.batch_execute(
        "UPDATE unit SET lot = dscsa.to_encrypted(set_byte(dscsa.envelope_bytes(lot), 30,
                 get_byte(dscsa.envelope_bytes(lot), 30) # 1))::dscsa.lot_encrypted,
                         gtin = dscsa.to_encrypted(set_byte(dscsa.envelope_bytes(gtin), 30,
                 get_byte(dscsa.envelope_bytes(gtin), 30) # 1))::dscsa.gtin_encrypted",
    )
    .expect("tamper");
    let mut reader = session_with_keys(&db, READER, &["k"]);
    assert_eq!(
        sqlstate(reader.query_one(
            "SELECT dscsa.verification_failure_reason(lot, expiry, 'B1', '280229') FROM unit",
            &[]
        )),
        "XX001"
    );
    assert_eq!(
        sqlstate(reader.query_one(
            "SELECT dscsa.identifier_matches(gtin, serial, '00614141000012', 'SN/1') FROM unit",
            &[]
        )),
        "XX001"
    );
}

/// How many slots the plan's index condition probes.
fn slots_probed(plan: &str) -> usize {
    plan.lines()
        .find(|l| l.trim_start().starts_with("Index Cond:"))
        .map_or(0, |l| l.matches("_identifier_index_slot(").count())
}

/// The rows and the plan of one prepared probe `pi = ANY (identifier_index_candidates(..))`
/// for each of `requests`, run with a generic plan.
fn probe(c: &mut Client, requests: &[(&str, &str)]) -> (Vec<Vec<i64>>, String) {
    let sql = "SELECT id FROM unit WHERE pi = ANY (dscsa.identifier_index_candidates($1, $2, 'pk')) ORDER BY id";
    c.batch_execute("SET plan_cache_mode = force_generic_plan")
        .expect("generic plans");
    let statement = c.prepare(sql).expect("prepare");
    let rows = requests
        .iter()
        .map(|(g, s)| {
            c.query(&statement, &[g, s])
                .expect("probe")
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect()
        })
        .collect();
    let plan = c
        .query(
            "EXPLAIN (COSTS OFF) SELECT id FROM unit WHERE pi = ANY (dscsa.identifier_index_candidates($1::text, $2::text, 'pk')) ORDER BY id",
            &[&requests[0].0, &requests[0].1],
        )
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    c.batch_execute("RESET plan_cache_mode").expect("reset");
    (rows, plan)
}

/// A database with blind-index key `pk` (loaded here, `blind_index` granted to
/// dscsa_reader) and `units` units indexed under it by product identifier (SN1, SN2, ...).
fn indexed_units(tag: &str, units: i64) -> (String, Client) {
    let (db, mut c) = fresh_db(tag);
    c.batch_execute(&format!(
        "SELECT dscsa.create_blind_index_key('pk');
         SELECT dscsa.grant_key('pk', 'dscsa_reader', 'blind_index');
         SELECT dscsa.load_key('pk');
         CREATE TABLE unit (id bigint PRIMARY KEY, pi bytea NOT NULL UNIQUE);
         INSERT INTO unit SELECT i, dscsa.identifier_index('00300010123455', 'SN' || i, 'pk')
           FROM generate_series(1, {units}) i;
         ANALYZE unit;"
    ))
    .expect("units under key version 1");
    (db, c)
}

#[test]
fn identifier_candidates_are_planned_as_one_probe_per_key_version() {
    let (db, mut c) = indexed_units("pi_slots", 5000);
    let mut requests: Vec<(String, String)> = (0..40)
        .map(|i| ("00300010123455".to_string(), format!("SN{}", 1 + i * 127)))
        .collect();
    requests.push(("0300010123455".into(), "SN7".into())); // GTIN-13 spelling
    requests.push(("00300010123455".into(), "SN99999".into())); // no such unit
    requests.push(("00300010123455".into(), "sn7".into())); // serials are case-sensitive
    let requests: Vec<(&str, &str)> = requests
        .iter()
        .map(|(g, s)| (g.as_str(), s.as_str()))
        .collect();

    // One version loaded: one slot, one index scan (no unnest, no bitmap), the same rows
    // as the call as written.
    let (rows, plan) = probe(&mut c, &requests);
    assert!(plan.contains("Index") && !plan.contains("Bitmap"), "{plan}");
    assert_eq!(slots_probed(&plan), 1, "{plan}");
    assert!(!plan.contains("identifier_index_candidates"), "{plan}");
    assert_eq!(rows.iter().filter(|r| r.len() == 1).count(), 41, "{rows:?}");
    assert_eq!(rows[40], vec![7]);
    assert!(rows[41].is_empty() && rows[42].is_empty());
    c.batch_execute("SET dscsa.blind_index_rewrite = off")
        .expect("off");
    let (rows_off, plan_off) = probe(&mut c, &requests);
    assert!(
        plan_off.contains("identifier_index_candidates"),
        "{plan_off}"
    );
    assert_eq!(rows_off, rows, "the rewrite changed a result");
    c.batch_execute("RESET dscsa.blind_index_rewrite")
        .expect("on");

    // A rotation: new units under version 2, the old ones not yet re-indexed. Two slots,
    // every unit found, the same rows as written.
    c.batch_execute(
        "SELECT dscsa.rotate_key('pk'); SELECT dscsa.load_key('pk');
         INSERT INTO unit SELECT i, dscsa.identifier_index('00300010123455', 'SN' || i, 'pk')
           FROM generate_series(5001, 5100) i;",
    )
    .expect("rotate");
    let mut rotated = requests.clone();
    rotated.push(("00300010123455", "SN5050"));
    let (rows, plan) = probe(&mut c, &rotated);
    assert_eq!(slots_probed(&plan), 2, "{plan}");
    assert_eq!(rows[0], vec![1]);
    assert_eq!(rows[43], vec![5050]);
    c.batch_execute("SET dscsa.blind_index_rewrite = off")
        .expect("off");
    let (rows_off, _) = probe(&mut c, &rotated);
    assert_eq!(
        rows_off, rows,
        "the rewrite changed a result during a rotation"
    );
    c.batch_execute("RESET dscsa.blind_index_rewrite")
        .expect("on");

    // Errors are the function's own either way: an invalid GTIN is 22023; a NULL finds
    // nothing (strict).
    for setting in ["on", "off"] {
        c.batch_execute(&format!("SET dscsa.blind_index_rewrite = {setting}"))
            .expect("setting");
        assert_eq!(
            sqlstate(c.query(
                "SELECT id FROM unit WHERE pi = ANY (dscsa.identifier_index_candidates($1::text, 'SN1', 'pk'))",
                &[&"00300010123456"]
            )),
            "22023",
            "rewrite {setting}"
        );
        assert_eq!(
            count(
                &mut c,
                "SELECT count(*) FROM unit WHERE pi = ANY (dscsa.identifier_index_candidates(NULL, 'SN1', 'pk'))"
            ),
            0
        );
    }
    c.batch_execute("RESET dscsa.blind_index_rewrite")
        .expect("on");

    // A role that may not run the candidates function is refused it, not given the slots.
    let mut nobody = connect(&db, NOBODY);
    assert_eq!(
        sqlstate(nobody.query(
            "SELECT dscsa.identifier_index_candidates('00300010123455', 'SN1', 'pk')",
            &[]
        )),
        "42501"
    );
}

#[test]
fn try_identifier_candidates_find_nothing_for_a_malformed_request() {
    let (db, mut c) = indexed_units("pi_try", 2000);
    // Each breaks one GS1 rule: no candidates, no error (identifier_index_candidates
    // raises 22023 for each).
    let malformed = [
        ("00300010123454", "SN7"),                   // check digit
        ("0030001012345", "SN7"),                    // GTIN-13 whose check digit is wrong
        ("003000101234X5", "SN7"),                   // not digits
        ("00300010123455", "SN 7"),                  // space: outside CSET 82
        ("00300010123455", "SN7SN7SN7SN7SN7SN7SN7"), // 21 characters
        ("00300010123455", ""),                      // empty serial
    ];
    let valid = [
        ("00300010123455", "SN7"),
        ("300010123455", "SN1999"),   // GTIN-12 spelling
        ("00300010123455", "SN2001"), // valid, no such unit
    ];
    let sql = "SELECT id FROM unit WHERE pi = ANY (dscsa.try_identifier_index_candidates($1, $2, 'pk')) ORDER BY id";
    let ids = |c: &mut Client, requests: &[(&str, &str)]| -> Vec<Vec<i64>> {
        c.batch_execute("SET plan_cache_mode = force_generic_plan")
            .expect("generic");
        let statement = c.prepare(sql).expect("prepare");
        let rows = requests
            .iter()
            .map(|(g, s)| {
                c.query(&statement, &[g, s])
                    .unwrap_or_else(|e| panic!("{g} {s}: {e}"))
                    .iter()
                    .map(|r| r.get::<_, i64>(0))
                    .collect()
            })
            .collect();
        c.batch_execute("RESET plan_cache_mode").expect("reset");
        rows
    };
    let plan_slots = |c: &mut Client| -> usize {
        let plan = explain(
            c,
            "COSTS OFF",
            "SELECT id FROM unit WHERE pi = ANY (dscsa.try_identifier_index_candidates('00300010123455', 'SN7', 'pk'))",
        );
        assert!(!plan.contains("try_identifier_index_candidates"), "{plan}");
        plan.lines()
            .find(|l| l.trim_start().starts_with("Index Cond:"))
            .map_or(0, |l| l.matches("_try_identifier_index_slot(").count())
    };

    for (versions, expected_slots) in [(1, 1), (2, 2)] {
        if versions == 2 {
            // A rotation not yet re-indexed: two slots, both versions' rows found.
            c.batch_execute(
                "SELECT dscsa.rotate_key('pk'); SELECT dscsa.load_key('pk');
                 UPDATE unit SET pi = dscsa.identifier_index('00300010123455', 'SN7', 'pk') WHERE id = 7;",
            )
            .expect("rotate");
        }
        assert_eq!(plan_slots(&mut c), expected_slots, "{versions} version(s)");
        assert_eq!(
            ids(&mut c, &malformed),
            vec![Vec::<i64>::new(); malformed.len()],
            "{versions} version(s)"
        );
        assert_eq!(
            ids(&mut c, &valid),
            vec![vec![7], vec![1999], vec![]],
            "{versions} version(s)"
        );
        // The same rows with the call as written, and the same as the raising function's
        // for valid requests.
        c.batch_execute("SET dscsa.blind_index_rewrite = off")
            .expect("off");
        assert_eq!(ids(&mut c, &malformed), vec![Vec::<i64>::new(); 6]);
        assert_eq!(ids(&mut c, &valid), vec![vec![7], vec![1999], vec![]]);
        c.batch_execute("RESET dscsa.blind_index_rewrite")
            .expect("on");
        for (g, s) in valid {
            let same: bool = c
                .query_one(
                    "SELECT dscsa.try_identifier_index_candidates($1, $2, 'pk') = dscsa.identifier_index_candidates($1, $2, 'pk')",
                    &[&g, &s],
                )
                .expect("compare")
                .get(0);
            assert!(same, "{g} {s}");
        }
        for (g, s) in malformed {
            // No candidate: NULL as written, NULL slots where the planner spells it.
            let none: bool = c
                .query_one(
                    "SELECT coalesce(bool_and(v IS NULL), true)
                       FROM unnest(dscsa.try_identifier_index_candidates($1, $2, 'pk')) v",
                    &[&g, &s],
                )
                .expect("direct call")
                .get(0);
            assert!(none, "{g} {s}");
            assert_eq!(
                sqlstate(c.query(
                    "SELECT dscsa.identifier_index_candidates($1, $2, 'pk')",
                    &[&g, &s]
                )),
                "22023",
                "{g} {s}"
            );
        }
    }

    // Only what breaks a rule is forgiven: a key that is not loaded still raises, and a
    // role that may not run the function is refused it.
    let mut reader = connect(&db, READER);
    assert_eq!(
        sqlstate(reader.query(
            "SELECT dscsa.try_identifier_index_candidates('00300010123455', 'SN7', 'pk')",
            &[]
        )),
        "55000"
    );
    let mut nobody = connect(&db, NOBODY);
    assert_eq!(
        sqlstate(nobody.query(
            "SELECT dscsa.try_identifier_index_candidates('00300010123455', 'SN7', 'pk')",
            &[]
        )),
        "42501"
    );
}

/// As a transparent lookup's slots (tests/integration/tests/lookup.rs), the identifier
/// index's slots refuse to run for more key versions than their plan was made for: a
/// scrollable cursor rewound after the key was rotated and loaded in its transaction.
#[test]
fn identifier_slots_refuse_a_plan_made_for_fewer_key_versions() {
    let (_db, mut c) = indexed_units("pi_stale_slots", 2000);
    for function in [
        "identifier_index_candidates",
        "try_identifier_index_candidates",
    ] {
        c.batch_execute(&format!(
            "BEGIN;
             DECLARE probe SCROLL CURSOR FOR
               SELECT id FROM unit WHERE pi = ANY (dscsa.{function}('00300010123455', 'SN7', 'pk'));"
        ))
        .expect("cursor");
        assert_eq!(
            c.query("FETCH ALL FROM probe", &[]).expect("fetch").len(),
            1,
            "{function}"
        );
        c.batch_execute("SELECT dscsa.rotate_key('pk'); SELECT dscsa.load_key('pk');")
            .expect("rotate and load");
        refused_as_stale_plan(
            c.batch_execute("MOVE ABSOLUTE 0 IN probe; FETCH ALL FROM probe"),
            function,
        );
        c.batch_execute("ROLLBACK").expect("rollback");
    }
}
