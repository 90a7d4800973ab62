//! Key rotation of the three kinds on the ERP schema (data key + re-encryption under
//! concurrent writes, blind-index key with lookups throughout, KEK re-wrap), the
//! auditor's verification report after deliberate corruption, importing values
//! encrypted by another application, and the VRS example.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pg_dscsa_itest::{count, env, erp_db, error_text, session_with_keys, sqlstate};

fn protect_units(c: &mut postgres::Client) {
    // Online protection commits per batch, so it is a statement of its own (a
    // multi-statement batch would be one implicit transaction).
    c.batch_execute("CALL dscsa.protect_column('unit', 'serial', kind => 'serial', blind_index_key => 'bk', batch_size => 20000)")
        .expect("protect unit.serial");
    c.batch_execute("SELECT dscsa.create_view('unit')")
        .expect("view");
}

#[test]
fn data_key_rotation_and_reencryption_under_concurrent_writes() {
    let (db, mut c) = erp_db("rotate", 100_000);
    protect_units(&mut c);
    let old_version: i32 = 1;
    c.query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate");
    c.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("reload");

    // Retiring the old version is refused while rows use it, with the count.
    let err = error_text(c.query_one("SELECT dscsa.retire_key('k', $1)", &[&old_version]));
    assert!(
        err.contains("still used by 100000 rows") || err.contains("still used by"),
        "{err}"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.retire_key('k', $1)", &[&old_version])),
        "55000"
    );

    // Other connections insert, update and delete through the view while it runs.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (db, stop, progress) = (db.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut app = session_with_keys(&db, "postgres", &["k", "bk"]);
                let mut i: i64 = 0;
                while !stop.load(Ordering::SeqCst) && i < 3000 {
                    i += 1;
                    let id = 2_000_000 + w * 100_000 + i;
                    let mut tx = app.transaction().expect("tx");
                    tx.execute(
                        "INSERT INTO unit_plain (id, lot_id, serial) VALUES ($1::bigint, 1, 'R' || $1::bigint)",
                        &[&id],
                    )
                    .expect("insert");
                    tx.execute("INSERT INTO saved_units VALUES ($1::bigint, 'R' || $1::bigint, NULL)", &[&id])
                        .expect("insert saved");
                    let target = 1 + (i * 7919 + w * 13) % 100_000;
                    tx.execute(
                        "UPDATE unit_plain SET serial = 'U' || id || '-' || $2::bigint WHERE id = $1",
                        &[&target, &i],
                    )
                    .expect("update");
                    tx.execute(
                        "UPDATE saved_units SET serial = 'U' || id || '-' || $2::bigint WHERE id = $1",
                        &[&target, &i],
                    )
                    .expect("update saved");
                    let gone = 1 + (i * 104_729 + w * 31) % 100_000;
                    tx.execute("DELETE FROM unit_plain WHERE id = $1", &[&gone]).expect("delete");
                    tx.execute("DELETE FROM saved_units WHERE id = $1", &[&gone])
                        .expect("delete saved");
                    tx.commit().expect("commit");
                    progress.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while progress.load(Ordering::SeqCst) < 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // (What the test needs is overlap: writes committed while the call ran. How many
    // depends on the host and on how many backfill workers share its cores with them.)
    let before = progress.load(Ordering::SeqCst);
    c.batch_execute("CALL dscsa.reencrypt('unit', 'serial', NULL, 2000)")
        .expect("reencrypt");
    let after = progress.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    assert!(
        after > before,
        "no write committed during the re-encryption ({before} before, {after} after)"
    );
    c.batch_execute("CALL dscsa.reencrypt('unit', 'serial')")
        .expect("catch up");

    let active: i32 = c
        .query_one("SELECT dscsa._active_version('k', 'data')", &[])
        .expect("active")
        .get(0);
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM unit WHERE dscsa.envelope_key_id(serial) <> {active}")
        ),
        0
    );
    let mismatched = count(
        &mut c,
        "SELECT count(*) FROM unit u FULL JOIN saved_units s USING (id)
          WHERE u.id IS NULL OR s.id IS NULL OR dscsa_decrypt(u.serial) IS DISTINCT FROM s.serial",
    );
    assert_eq!(mismatched, 0, "a row was lost or changed");
    // Blind indexes followed the rewritten rows.
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM unit u JOIN saved_units s USING (id) WHERE u.serial_bidx <> dscsa.blind_index(s.serial, 'bk', 'serial')"),
        0
    );
    c.query_one("SELECT dscsa.retire_key('k', $1)", &[&old_version])
        .expect("retire once unused");
    // Archived-style check: the auditor's report is clean and names one version.
    let rows: Vec<(Option<i32>, String, i64, Option<i64>)> = c
        .query("SELECT key_version, key_status, rows, failed FROM dscsa.verify_column('unit', 'serial')", &[])
        .expect("verify")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].0, rows[0].1.as_str(), rows[0].3),
        (Some(2), "active", Some(0))
    );
}

#[test]
fn blind_index_key_rotation_keeps_lookups_working_throughout() {
    let (db, mut c) = erp_db("bidx_rotate", 20_000);
    protect_units(&mut c);
    let sample: Vec<String> = c
        .query(
            "SELECT serial FROM saved_units WHERE id % 997 = 0 ORDER BY id",
            &[],
        )
        .expect("sample")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lookup = |c: &mut postgres::Client| -> usize {
        sample
            .iter()
            .filter(|s| {
                c.query_opt(
                    "SELECT 1 FROM unit WHERE serial_bidx = ANY (dscsa.blind_index_candidates($1, 'bk', 'serial'))
                        AND dscsa_decrypt(serial) = $1",
                    &[s],
                )
                .expect("lookup")
                .is_some()
            })
            .count()
    };
    assert_eq!(lookup(&mut c), sample.len());
    c.query_one("SELECT dscsa.rotate_key('bk')", &[])
        .expect("rotate bk");
    // The old blind-index version is still in use: retiring it is refused.
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.retire_key('bk', 1)", &[])),
        "55000"
    );
    c.query_one("SELECT dscsa.load_key('bk')", &[])
        .expect("reload bk");
    // Before any recomputation: every lookup still finds its row (old-version index values).
    assert_eq!(lookup(&mut c), sample.len());
    // During: a second connection looks up while the recomputation runs.
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicUsize::new(0));
    let lookups = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (db, stop, misses, lookups, sample) = (
            db.clone(),
            stop.clone(),
            misses.clone(),
            lookups.clone(),
            sample.clone(),
        );
        std::thread::spawn(move || {
            let mut r = session_with_keys(&db, "postgres", &["k", "bk"]);
            while !stop.load(Ordering::SeqCst) {
                for s in &sample {
                    let found = r
                        .query_opt(
                            "SELECT 1 FROM unit WHERE serial_bidx = ANY (dscsa.blind_index_candidates($1, 'bk', 'serial'))",
                            &[s],
                        )
                        .expect("lookup")
                        .is_some();
                    if !found {
                        misses.fetch_add(1, Ordering::SeqCst);
                    }
                    lookups.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    c.batch_execute("CALL dscsa.reindex_blind('unit', 'serial', 500)")
        .expect("reindex");
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("reader");
    assert!(lookups.load(Ordering::SeqCst) > 0);
    assert_eq!(
        misses.load(Ordering::SeqCst),
        0,
        "a lookup missed during the rotation"
    );
    // After: every index value is under the new version, and the old one can be retired.
    let active: i32 = c
        .query_one("SELECT dscsa._active_version('bk', 'blind_index')", &[])
        .expect("a")
        .get(0);
    assert_eq!(
        count(
            &mut c,
            &format!(
                "SELECT count(*) FROM unit WHERE substr(serial_bidx, 1, 4) <> int4send({active})"
            )
        ),
        0
    );
    assert_eq!(lookup(&mut c), sample.len());
    c.query_one("SELECT dscsa.retire_key('bk', 1)", &[])
        .expect("retire old bk");
}

fn devkms(kek_file: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{}/pg_dscsa_devkms", env("DSCSA_TEST_PG_BIN")))
        .args(["--kek-file", kek_file])
        .args(args)
        .output()
        .expect("run pg_dscsa_devkms");
    assert!(
        out.status.success(),
        "devkms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database whose hook uses its own KEK file, so that rotating the KEK there cannot
/// disturb tests running in parallel.
fn private_kek_db(tag: &str) -> (String, postgres::Client, String) {
    let (db, mut c) = erp_db(tag, 2_000);
    let dir = std::path::Path::new(&env("DSCSA_TEST_KEK"))
        .parent()
        .expect("kms dir")
        .to_path_buf();
    let kek = dir.join(format!("{db}.kek")).display().to_string();
    let hook = format!(
        "{}/pg_dscsa_devkms --kek-file {kek}",
        env("DSCSA_TEST_PG_BIN")
    );
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET dscsa.kms_command = '{hook}'"
    ))
    .expect("per-database hook");
    c.execute(
        "SELECT set_config('dscsa.kms_command', $1, false)",
        &[&hook],
    )
    .expect("hook");
    (db, c, kek)
}

#[test]
fn kek_rotation_rewraps_without_touching_data() {
    let (db, mut c, kek) = private_kek_db("kek");
    c.batch_execute(
        "SELECT dscsa.unload_all_keys();
         SELECT dscsa.create_key('k2'); SELECT dscsa.create_blind_index_key('bk2');
         SELECT dscsa.load_key('k2'); SELECT dscsa.load_key('bk2'); SET dscsa.key_name = 'k2';
         CREATE TABLE tag (id int PRIMARY KEY, serial text NOT NULL);
         INSERT INTO tag SELECT i, 'T' || i FROM generate_series(1, 500) i;
         CREATE TABLE saved_tag AS SELECT * FROM tag;
         CALL dscsa.protect_column('tag', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk2');",
    )
    .expect("setup");
    let old_fp = devkms(&kek, &["--list"]);
    let data_before: Vec<u8> = c
        .query_one(
            "SELECT string_agg(dscsa.envelope_bytes(serial), '' ORDER BY id) FROM tag",
            &[],
        )
        .expect("bytes")
        .get(0);
    let new_fp = devkms(&kek, &["--add-kek"]);
    assert_ne!(new_fp, old_fp);
    let n: i32 = c
        .query_one("SELECT dscsa.rotate_kek('dev', $1)", &[&old_fp])
        .expect("rotate kek")
        .get(0);
    assert_eq!(n, 2);
    let refs: Vec<String> = c
        .query(
            "SELECT DISTINCT kek_ref FROM dscsa.keyring WHERE key_name IN ('k2', 'bk2')",
            &[],
        )
        .expect("refs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(refs, vec![new_fp.clone()]);
    // No data rewritten.
    let data_after: Vec<u8> = c
        .query_one(
            "SELECT string_agg(dscsa.envelope_bytes(serial), '' ORDER BY id) FROM tag",
            &[],
        )
        .expect("bytes")
        .get(0);
    assert_eq!(data_before, data_after);
    // The old KEK is destroyed; a new session still loads every key and reads every row.
    devkms(&kek, &["--remove-kek", &old_fp]);
    let mut fresh = session_with_keys(&db, "postgres", &[]);
    fresh
        .batch_execute(
            "SET dscsa.key_name = 'k2'; SELECT dscsa.load_key('k2'); SELECT dscsa.load_key('bk2');",
        )
        .expect("load under the new KEK");
    assert_eq!(
        count(&mut fresh, "SELECT count(*) FROM tag t JOIN saved_tag s USING (id) WHERE dscsa_decrypt(t.serial) = s.serial"),
        500
    );
    assert_eq!(
        count(
            &mut fresh,
            "SELECT count(*) FROM tag WHERE serial_bidx = dscsa.blind_index('T7', 'bk2', 'serial')"
        ),
        1
    );
    // A rotation that cannot unwrap one entry (here 'k', wrapped under the shared test
    // KEK this database's hook does not hold) changes nothing at all.
    let before: i64 = count(
        &mut c,
        "SELECT count(*) FROM dscsa.keyring WHERE rewrapped_at IS NOT NULL",
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.rotate_kek()", &[])),
        "38000"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dscsa.keyring WHERE rewrapped_at IS NOT NULL"
        ),
        before
    );
}

/// key_version, key_status, rows, authenticated, failed, failed_rows.
type ReportRow = (
    Option<i32>,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

#[test]
fn verification_report_names_corrupted_rows_without_revealing_values() {
    let (_db, mut c) = erp_db("verify", 5_000);
    c.batch_execute(
        "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');
         CALL dscsa.protect_column('unit', 'note', mode => 'in_place');
         SELECT dscsa.rotate_key('k'); SELECT dscsa.load_key('k');
         UPDATE unit SET note = dscsa_encrypt('new ' || id) WHERE id BETWEEN 100 AND 199;",
    )
    .expect("setup");
    // Corrupt three values behind the triggers' back (as a disk or a rogue UPDATE might).
    c.batch_execute(
        "SET session_replication_role = replica;
         UPDATE unit SET note = dscsa.to_encrypted(set_byte(dscsa.envelope_bytes(note), 25,
                                get_byte(dscsa.envelope_bytes(note), 25) # 1))
          WHERE id IN (8, 15, 150);
         RESET session_replication_role;",
    )
    .expect("corrupt");
    let rows: Vec<ReportRow> = c
        .query(
            "SELECT key_version, key_status, rows, authenticated, failed, failed_rows::text
               FROM dscsa.verify_column('unit', 'note')",
            &[],
        )
        .expect("report")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let nulls = count(&mut c, "SELECT count(*) FROM unit WHERE note IS NULL");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0].0, Some(1));
    assert_eq!(rows[0].1, "decrypt_only");
    assert_eq!(rows[0].4, Some(2));
    assert_eq!(rows[0].5.as_deref(), Some(r#"[{"id": 8}, {"id": 15}]"#));
    assert_eq!(rows[1].0, Some(2));
    assert_eq!((rows[1].3, rows[1].4), (Some(100 - 1), Some(1)));
    assert_eq!(rows[1].5.as_deref(), Some(r#"[{"id": 150}]"#));
    assert_eq!((rows[2].1.as_str(), rows[2].2), ("null", nulls));
    assert!(nulls > 0);
    // The report carries no plaintext; the corrupted value itself is refused on read.
    let report: String = c
        .query_one(
            "SELECT string_agg(r::text, '') FROM dscsa.verify_column('unit', 'note') r",
            &[],
        )
        .expect("report text")
        .get(0);
    assert!(!report.contains("note "), "{report}");
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_decrypt(note) FROM unit WHERE id = 8", &[])),
        "XX001"
    );
    // A column on the unloaded key is an error, not a list of "failures".
    c.query_one("SELECT dscsa.unload_key('k')", &[])
        .expect("unload");
    assert_eq!(
        sqlstate(c.query("SELECT * FROM dscsa.verify_column('unit', 'note')", &[])),
        "55000"
    );
}

#[test]
fn values_encrypted_by_middleware_are_imported_through_the_hook() {
    let (db, mut c, kek) = private_kek_db("import");
    let middleware_key = [0x42u8; 32];
    // The key the middleware fetched from its KMS; the dev hook serves it from
    // <kek file>.imports (mode 0600, owned by the server's user).
    let imports = format!("{kek}.imports");
    std::fs::write(
        &imports,
        format!("mw-2024 {}\n", STANDARD.encode(middleware_key)),
    )
    .expect("imports");
    std::process::Command::new("chown")
        .args(["postgres:postgres", &imports])
        .status()
        .expect("chown");
    std::process::Command::new("chmod")
        .args(["600", &imports])
        .status()
        .expect("chmod");
    c.batch_execute(
        "SELECT dscsa.unload_all_keys();
         SELECT dscsa.create_key('k3'); SELECT dscsa.load_key('k3'); SET dscsa.key_name = 'k3';
         SELECT dscsa.import_key('mw', 'mw-2024');
         SELECT dscsa.grant_key('k3', 'dscsa_writer', 'encrypt'), dscsa.grant_key('mw', 'dscsa_writer', 'decrypt');
         CREATE TABLE legacy (id int PRIMARY KEY, serial_json jsonb, serial dscsa.serial_encrypted);",
    )
    .expect("setup");
    let cipher = Aes256Gcm::new_from_slice(&middleware_key).expect("key");
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&i.to_be_bytes());
        let plain = format!("MW-SERIAL-{i:05}");
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .expect("encrypt");
        let doc = format!(
            r#"{{"nonce": "{}", "ciphertext": "{}"}}"#,
            STANDARD.encode(nonce),
            STANDARD.encode(ct)
        );
        c.execute(
            "INSERT INTO legacy (id, serial_json) VALUES ($1, $2::text::jsonb)",
            &[&(i as i32), &doc],
        )
        .expect("insert json");
        expected.push(plain);
    }
    c.batch_execute("UPDATE legacy SET serial = dscsa.import_json(serial_json, 'mw', 'serial')")
        .expect("convert");
    for (i, plain) in expected.iter().enumerate() {
        let got: String = c
            .query_one(
                "SELECT dscsa_decrypt(serial) FROM legacy WHERE id = $1",
                &[&(i as i32)],
            )
            .expect("decrypt")
            .get(0);
        assert_eq!(&got, plain);
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM legacy WHERE dscsa.envelope_kind(serial) <> 'serial'"
        ),
        0
    );
    // Tampered, malformed and wrong-key inputs fail with clear SQLSTATEs, echoing nothing.
    let good: String = c
        .query_one("SELECT serial_json::text FROM legacy WHERE id = 3", &[])
        .expect("j")
        .get(0);
    let tampered = good.replacen("\"ciphertext\": \"", "\"ciphertext\": \"AAAA", 1);
    assert_eq!(
        sqlstate(c.query_one(
            "SELECT dscsa.import_json($1::text::jsonb, 'mw')",
            &[&tampered]
        )),
        "XX001"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.import_json('{\"nonce\": \"x\"}', 'mw')", &[])),
        "22023"
    );
    let err = error_text(c.query_one(
        "SELECT dscsa.import_json('{\"nonce\": \"!!\", \"ciphertext\": \"SECRETSECRET\"}', 'mw')",
        &[],
    ));
    assert!(!err.contains("SECRETSECRET"), "{err}");
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.import_json($1::text::jsonb, 'k3')", &[&good])),
        "22023"
    );
    // An import key never encrypts.
    assert_eq!(
        sqlstate(c.batch_execute("SET dscsa.key_name = 'mw'; SELECT dscsa_encrypt('x')")),
        "22023"
    );
    // A writer-only role may convert (the result is ciphertext) but not decrypt.
    let mut w = session_with_keys(&db, "itest_writer", &["k3"]);
    w.batch_execute("SET dscsa.key_name = 'k3'")
        .expect("key name");
    w.query_one(
        "SELECT dscsa.import_json($1::text::jsonb, 'mw', 'serial')",
        &[&good],
    )
    .expect("writer converts");
    assert_eq!(
        sqlstate(w.query_one(
            "SELECT dscsa.dscsa_decrypt(dscsa.import_json($1::text::jsonb, 'mw'))",
            &[&good]
        )),
        "42501"
    );
    // No plaintext reached the server log.
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(format!("{}/server.log", env("DSCSA_TEST_DATADIR")))
        .unwrap_or_default();
    assert!(
        !log.contains("MW-SERIAL-"),
        "imported plaintext in the server log"
    );
}

#[test]
fn vrs_example_answers_each_gs1_reason() {
    let (_db, mut c) = erp_db("vrs", 10);
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/vrs.sql"
    ))
    .expect("example");
    c.batch_execute(
        "SELECT dscsa.create_blind_index_key('vrs_bidx'); SELECT dscsa.load_key('vrs_bidx');",
    )
    .expect("key");
    c.batch_execute(&script).expect("example script");
    c.batch_execute(
        "INSERT INTO vrs.product_units (gtin, serial, lot, expiry)
         SELECT '00300010123455', 'SN' || i, 'A' || (i % 10), date '2026-03-31' + (i % 3)
           FROM generate_series(1, 20000) i;
         INSERT INTO vrs.product_units (gtin, serial, lot, expiry) VALUES ('10614141073464', 'SN1', 'B1', '2027-02-28');
         CALL vrs.protect();",
    )
    .expect("load and protect");
    let ask = |c: &mut postgres::Client,
               gtin: &str,
               serial: &str,
               lot: &str,
               exp: &str|
     -> (bool, Option<String>) {
        let r = c
            .query_one(
                "SELECT * FROM vrs.verify($1, $2, $3, $4)",
                &[&gtin, &serial, &lot, &exp],
            )
            .expect("verify");
        (r.get(0), r.get(1))
    };
    // SN30: lot A0, expiry 2026-03-31 (i % 3 = 0).
    assert_eq!(
        ask(&mut c, "00300010123455", "SN30", "A0", "260331"),
        (true, None)
    );
    assert_eq!(
        ask(&mut c, "300010123455", "SN30", "A0", "260331"),
        (true, None),
        "GTIN-12 spelling"
    );
    assert_eq!(
        ask(&mut c, "00300010123455", "SN30", "A0", "260300"),
        (true, None),
        "DD=00 is the month's last day"
    );
    assert_eq!(
        ask(&mut c, "00300010123455", "SN999999", "A0", "260331")
            .1
            .as_deref(),
        Some("No_match_GTIN_Serial")
    );
    assert_eq!(
        ask(&mut c, "10614141073464", "SN30", "A0", "260331")
            .1
            .as_deref(),
        Some("No_match_GTIN_Serial")
    );
    assert_eq!(
        ask(&mut c, "00300010123455", "SN30", "A9", "260331")
            .1
            .as_deref(),
        Some("No_match_GTIN_Serial_Lot")
    );
    assert_eq!(
        ask(&mut c, "00300010123455", "SN30", "A0", "260401")
            .1
            .as_deref(),
        Some("No_match_GTIN_Serial_Expiry")
    );
    assert_eq!(
        ask(&mut c, "00300010123455", "SN30", "A9", "260401")
            .1
            .as_deref(),
        Some("No_match_GTIN_Serial_Lot_Expiry")
    );
    // Same serial under another GTIN is a different product identifier.
    assert_eq!(
        ask(&mut c, "10614141073464", "SN1", "B1", "270228"),
        (true, None)
    );
    let (verified, _) = ask(&mut c, "00300010123455", "SN1", "B1", "270228");
    assert!(!verified);
    // Any spelling that carries the four fields: element string, scanner string, Digital Link.
    let ask_one = |c: &mut postgres::Client, identifier: &str| -> (bool, Option<String>) {
        let r = c
            .query_one("SELECT * FROM vrs.verify($1)", &[&identifier])
            .unwrap_or_else(|e| panic!("{identifier}: {e}"));
        (r.get(0), r.get(1))
    };
    for spelling in [
        "(01)00300010123455(17)260331(10)A0(21)SN30",
        "]d2010030001012345517260331\u{1d}10A0\u{1d}21SN30",
        "https://id.example.org/01/00300010123455/10/A0/21/SN30?17=260331",
    ] {
        assert_eq!(ask_one(&mut c, spelling), (true, None), "{spelling:?}");
    }
    assert_eq!(
        ask_one(&mut c, "(01)00300010123455(17)260331(10)A9(21)SN30")
            .1
            .as_deref(),
        Some("No_match_GTIN_Serial_Lot")
    );
    // A request that breaks a GS1 rule identifies no unit (and is not an error): a wrong
    // check digit, a GTIN that is not digits, a serial outside CSET 82 or too long. Also
    // from a generic plan of the prepared request, as a responder's pool runs it.
    c.batch_execute("SET plan_cache_mode = force_generic_plan")
        .expect("generic plans");
    for (gtin, serial) in [
        ("00300010123454", "SN30"),
        ("0030001012345X", "SN30"),
        ("00300010123455", "SN 30"),
        ("00300010123455", "SN30SN30SN30SN30SN30S"),
    ] {
        assert_eq!(
            ask(&mut c, gtin, serial, "A0", "260331"),
            (false, Some("No_match_GTIN_Serial".to_string())),
            "{gtin} {serial:?}"
        );
    }
    assert_eq!(
        ask(&mut c, "00300010123455", "SN30", "A0", "260331"),
        (true, None)
    );
    let verify_plan = pg_dscsa_itest::explain(
        &mut c,
        "COSTS OFF",
        "SELECT * FROM vrs.verify('00300010123455', 'SN30', 'A0', '260331')",
    );
    assert!(
        verify_plan
            .lines()
            .any(|l| l.contains("Index Cond") && l.contains("_try_identifier_index_slot(")),
        "one probe of the identifier index: {verify_plan}"
    );
    c.batch_execute("RESET plan_cache_mode").expect("reset");
    // Commissioning from a scan, then verifying it; the same unit again is refused.
    c.query_one(
        "SELECT vrs.commission('(01)09520123456788(17)280200(10)L9(21)NEW/1')",
        &[],
    )
    .expect("commission");
    assert_eq!(
        ask(&mut c, "9520123456788", "NEW/1", "L9", "280229"),
        (true, None),
        "GTIN-13 spelling; 280200 stored as the month's last day"
    );
    assert_eq!(
        pg_dscsa_itest::sqlstate(c.query_one(
            "SELECT vrs.commission('https://example.com/01/09520123456788/10/L9/21/NEW%2F1?17=280200')",
            &[]
        )),
        "23505",
        "serial unique within its GTIN"
    );
    // The lookup is one probe of the product-identifier index.
    c.batch_execute("SET enable_seqscan = off; SET dscsa.identifier_index_key = 'vrs_bidx'")
        .expect("s");
    let plan = pg_dscsa_itest::explain(
        &mut c,
        "COSTS OFF",
        "SELECT 1 FROM vrs.product_units u WHERE u.pi = ANY (dscsa.identifier_index_candidates('urn:epc:id:sgtin:0300010.012345.SN30'))",
    );
    assert!(plan.contains("product_units_pi_key"), "{plan}");
}
