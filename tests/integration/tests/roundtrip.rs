//! Round trips, tamper detection, context and field-kind binding, key scoping, nonce
//! uniqueness across backends and parallel plans, from a real client.

use std::collections::HashSet;

use pg_dscsa_itest::{connect, error_text, fresh_db, sqlstate, Envelope};

#[test]
fn text_round_trips_through_text_and_binary_protocols() {
    let (_db, mut c) = fresh_db("rt");
    let long = "x".repeat(5000);
    let values = [
        "",
        "SN0000000000000001",
        "6789/&%\"!?()",
        "Grüße ✓ 漢字 🚚",
        long.as_str(),
    ];
    for v in values {
        // Text result (armored) fed back through the input function.
        let row = c
            .query_one("SELECT dscsa.armor(dscsa_encrypt($1::text))", &[&v])
            .expect("encrypt");
        let armored: String = row.get(0);
        assert!(armored.starts_with("dscsa:"), "{armored}");
        assert!(!armored.contains(v) || v.is_empty());
        let back: String = c
            .query_one("SELECT dscsa_decrypt(dscsa.dearmor($1))", &[&armored])
            .map(|r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, v);
        // Binary result (send) and binary parameter (recv).
        let env: Envelope = c
            .query_one("SELECT dscsa_encrypt($1::text, 'erp.unit.serial')", &[&v])
            .expect("encrypt")
            .get(0);
        let back: String = c
            .query_one(
                "SELECT dscsa_decrypt($1::dscsa.encrypted, 'erp.unit.serial')",
                &[&env],
            )
            .expect("decrypt")
            .get(0);
        assert_eq!(back, v);
    }
    let null: Option<String> = c
        .query_one("SELECT dscsa_decrypt(dscsa_encrypt(NULL::text))", &[])
        .expect("null")
        .get(0);
    assert_eq!(null, None);
}

#[test]
fn every_flipped_byte_is_detected_and_nothing_decrypts() {
    let (_db, mut c) = fresh_db("tamper");
    let env: Vec<u8> = c
        .query_one(
            "SELECT dscsa.envelope_bytes(dscsa_encrypt('SN0000000000000001', 'ctx'))",
            &[],
        )
        .expect("encrypt")
        .get(0);
    for i in 0..env.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut t = env.clone();
            t[i] ^= flip;
            let state = sqlstate(c.query_one("SELECT dscsa_decrypt($1::bytea, 'ctx')", &[&t]));
            // Bytes 0 (version) and 1 (field kind) are checked before GCM; the rest by the tag.
            let expected: &[&str] = if i < 2 {
                &["22P02", "XX001"]
            } else {
                &["XX001"]
            };
            assert!(
                expected.contains(&state.as_str()),
                "byte {i} flip {flip:#x}: {state}"
            );
            let tried: Option<String> = c
                .query_one("SELECT dscsa_try_decrypt($1::bytea, 'ctx')", &[&t])
                .expect("try variant does not raise")
                .get(0);
            assert_eq!(
                tried, None,
                "byte {i} flip {flip:#x} decrypted to something"
            );
        }
    }
    // Truncated and extended envelopes too.
    assert_eq!(
        sqlstate(c.query_one(
            "SELECT dscsa_decrypt($1::bytea, 'ctx')",
            &[&env[..env.len() - 1].to_vec()]
        )),
        "XX001"
    );
    let mut longer = env.clone();
    longer.push(0);
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_decrypt($1::bytea, 'ctx')", &[&longer])),
        "XX001"
    );
    assert_eq!(
        sqlstate(c.query_one(
            "SELECT dscsa_decrypt($1::bytea, 'ctx')",
            &[&env[..20].to_vec()]
        )),
        "22P02"
    );
    // The message names neither the key nor the plaintext.
    let mut t = env.clone();
    t[30] ^= 1;
    let text = error_text(c.query_one("SELECT dscsa_decrypt($1::bytea, 'ctx')", &[&t]));
    assert!(
        text.starts_with("ciphertext authentication failed"),
        "{text}"
    );
    assert!(!text.contains("SN0000000000000001"));
}

#[test]
fn ciphertext_moved_to_another_context_or_field_is_rejected() {
    let (_db, mut c) = fresh_db("ctx");
    c.batch_execute(
        "CREATE TABLE unit (id int PRIMARY KEY, serial dscsa.serial_encrypted, lot dscsa.lot_encrypted, note dscsa.encrypted);
         INSERT INTO unit VALUES (1, dscsa_encrypt_serial('SN1', 'erp.unit.serial'), dscsa_encrypt_lot('LOT1', 'erp.unit.lot'),
                                  dscsa_encrypt('n', 'erp.unit.note'));",
    )
    .expect("setup");
    // Copying a serial ciphertext into the lot column fails the domain CHECK.
    assert_eq!(
        sqlstate(c.execute(
            "UPDATE unit SET lot = serial::dscsa.encrypted::dscsa.lot_encrypted",
            &[]
        )),
        "23514"
    );
    assert_eq!(
        sqlstate(c.execute(
            "UPDATE unit SET lot = dscsa_encrypt('LOT2')::dscsa.lot_encrypted",
            &[]
        )),
        "23514"
    );
    // The note ciphertext decrypted under the serial's context fails authentication.
    assert_eq!(
        sqlstate(c.query_one(
            "SELECT dscsa_decrypt(note, 'erp.unit.serial') FROM unit",
            &[]
        )),
        "XX001"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_decrypt(note) FROM unit", &[])),
        "XX001"
    );
    // The serial under the right context decrypts; under the lot's context it does not.
    let s: String = c
        .query_one(
            "SELECT dscsa_decrypt(serial, 'erp.unit.serial') FROM unit",
            &[],
        )
        .expect("ok")
        .get(0);
    assert_eq!(s, "SN1");
    assert_eq!(
        sqlstate(c.query_one(
            "SELECT dscsa_decrypt(serial, 'erp.unit.lot') FROM unit",
            &[]
        )),
        "XX001"
    );
    // Plaintext can never be stored in an encrypted column.
    let err = c.execute(
        "INSERT INTO unit (id, note) VALUES (2, 'PLAINTEXT-SN-777')",
        &[],
    );
    let text = error_text(err);
    assert!(
        !text.contains("PLAINTEXT-SN-777"),
        "error echoes the rejected text: {text}"
    );
    assert_eq!(
        sqlstate(c.execute(
            "INSERT INTO unit (id, note) VALUES (2, 'PLAINTEXT-SN-777')",
            &[]
        )),
        "22P02"
    );
    // There is no cast from text and no comparison operator.
    assert_eq!(
        sqlstate(c.query_one("SELECT 'x'::text::dscsa.encrypted", &[])),
        "42846"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT note::text FROM unit", &[])),
        "42846"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT serial::varchar FROM unit", &[])),
        "42846"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT note = note FROM unit", &[])),
        "42883"
    );
}

#[test]
fn missing_key_and_limits_give_clear_errors() {
    let (_db, mut c) = fresh_db("nokey");
    c.batch_execute("CREATE TABLE t AS SELECT dscsa_encrypt('v') AS c")
        .expect("setup");
    c.query_one("SELECT dscsa.unload_all_keys()", &[])
        .expect("unload");
    let text = error_text(c.query_one("SELECT dscsa_decrypt(c) FROM t", &[]));
    assert!(
        text.contains("is not loaded in this session") && text.contains("dscsa.load_key"),
        "{text}"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_decrypt(c) FROM t", &[])),
        "55000"
    );
    // try_decrypt still raises for a missing key: a scan must not silently become NULLs.
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_try_decrypt(c) FROM t", &[])),
        "55000"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_encrypt('x')", &[])),
        "55000"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.load_key('no_such_key')", &[])),
        "42704"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.load_key('k', 'forever')", &[])),
        "22023"
    );
    c.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load");
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_encrypt(repeat('a', 1048577))", &[])),
        "54000"
    );
    c.query_one("SELECT dscsa_encrypt(repeat('a', 1048576))", &[])
        .expect("exactly the maximum is fine");
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa_encrypt('a', repeat('c', 256))", &[])),
        "54000"
    );
}

#[test]
fn transaction_scoped_keys_end_with_the_transaction() {
    let (_db, mut c) = fresh_db("txscope");
    c.query_one("SELECT dscsa.unload_all_keys()", &[])
        .expect("unload");
    for end in ["COMMIT", "ROLLBACK"] {
        c.batch_execute("BEGIN").expect("begin");
        let n: i32 = c
            .query_one("SELECT dscsa.load_key('k', 'transaction')", &[])
            .expect("load")
            .get(0);
        assert_eq!(n, 1);
        c.query_one("SELECT dscsa_encrypt('inside')", &[])
            .expect("key usable inside the transaction");
        c.batch_execute(end).expect("end");
        let loaded: i64 = c
            .query_one("SELECT count(*) FROM dscsa.loaded_keys()", &[])
            .expect("q")
            .get(0);
        assert_eq!(loaded, 0, "transaction-scoped key survived {end}");
        assert_eq!(
            sqlstate(c.query_one("SELECT dscsa_encrypt('after')", &[])),
            "55000"
        );
    }
    // A session-scoped load survives commits.
    c.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load");
    c.batch_execute("BEGIN; SELECT 1; COMMIT").expect("tx");
    c.query_one("SELECT dscsa_encrypt('still')", &[])
        .expect("session key survives");
}

#[test]
fn nonces_never_repeat_across_backends() {
    let (db, mut c1) = fresh_db("nonce");
    let mut c2 = connect(&db, "postgres");
    c2.batch_execute("SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k')")
        .expect("second session");
    let mut seen = HashSet::new();
    for c in [&mut c1, &mut c2] {
        for row in c
            .query(
                "SELECT dscsa.envelope_nonce(dscsa_encrypt('SN')) FROM generate_series(1, 100000)",
                &[],
            )
            .expect("encrypt")
        {
            let nonce: Vec<u8> = row.get(0);
            assert_eq!(nonce.len(), 12);
            assert!(seen.insert(nonce), "nonce repeated");
        }
    }
    assert_eq!(seen.len(), 200_000);
}

#[test]
fn parallel_plans_give_correct_results() {
    let (_db, mut c) = fresh_db("parallel");
    c.batch_execute(
        "CREATE TABLE p AS SELECT i, lpad(i::text, 20, 'SN') AS plain, dscsa_encrypt(lpad(i::text, 20, 'SN')) AS c
           FROM generate_series(1, 20000) i;
         ANALYZE p;
         SET force_parallel_mode = on;
         SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
         SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2;",
    )
    .expect("setup");
    // Data keys never leave the leader, so decryption runs above the Gather while the
    // scan itself runs in parallel workers.
    let plan: Vec<String> = c
        .query(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)
             SELECT count(*) FILTER (WHERE dscsa_decrypt(c) = plain) FROM p",
            &[],
        )
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("Gather")), "{plan:?}");
    // At least one worker really ran the scan (others may be busy with parallel tests).
    assert!(
        plan.iter()
            .any(|l| l.contains("Workers Launched: ") && !l.contains("Workers Launched: 0")),
        "{plan:?}"
    );
    assert!(
        plan.iter().any(|l| l.contains("Parallel Seq Scan")),
        "{plan:?}"
    );
    let ok: i64 = c
        .query_one(
            "SELECT count(*) FILTER (WHERE dscsa_decrypt(c) = plain) FROM p",
            &[],
        )
        .expect("parallel decrypt")
        .get(0);
    assert_eq!(ok, 20000);
    let rows = c
        .query(
            "SELECT i, plain, dscsa_decrypt(c) FROM p WHERE i % 7 = 0",
            &[],
        )
        .expect("parallel scan, decrypt in leader");
    assert_eq!(rows.len(), 20000 / 7);
    for r in rows {
        let (plain, dec): (String, String) = (r.get(1), r.get(2));
        assert_eq!(plain, dec);
    }
    let sum: i64 = c
        .query_one(
            "SELECT sum(length(dscsa_decrypt(dscsa_encrypt(plain, 'p.c'), 'p.c'))) FROM p WHERE i > 0",
            &[],
        )
        .expect("parallel round trip")
        .get(0);
    assert_eq!(sum, 20000 * 20);
}

#[test]
fn encryption_follows_a_rotation_made_by_another_session() {
    use pg_dscsa_itest::{READER, WRITER};
    let (db, mut su) = fresh_db("follow");
    su.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, c dscsa.encrypted);
         GRANT SELECT, INSERT ON t TO itest_writer, itest_reader;",
    )
    .expect("setup");
    let mut w = connect(&db, WRITER);
    w.batch_execute("SET dscsa.key_name = 'k'").expect("set");
    w.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load");
    w.execute("INSERT INTO t VALUES (1, dscsa_encrypt('before'))", &[])
        .expect("insert");
    // Another session (the key administrator) rotates the key.
    let new_id: i32 = su
        .query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate")
        .get(0);
    // The writer's next transaction notices, unwraps the new version through the hook,
    // and encrypts under it; it never writes under the now decrypt-only version.
    w.execute("INSERT INTO t VALUES (2, dscsa_encrypt('after'))", &[])
        .expect("insert after rotation");
    let ids: Vec<i64> = su
        .query("SELECT dscsa.envelope_key_id(c) FROM t ORDER BY id", &[])
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[1], i64::from(new_id));
    let loaded: i64 = w
        .query_one(
            "SELECT count(*) FROM dscsa.loaded_keys() WHERE key_name = 'k'",
            &[],
        )
        .expect("loaded")
        .get(0);
    assert_eq!(loaded, 2, "the writer holds both versions now");
    let mut r = connect(&db, READER);
    r.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load");
    let values: Vec<String> = r
        .query("SELECT dscsa_decrypt(c) FROM t ORDER BY id", &[])
        .expect("decrypt")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(values, ["before", "after"]);
}
