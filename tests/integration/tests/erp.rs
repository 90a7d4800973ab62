//! The DBA workflow on a realistic ERP schema (products, lots, serialized units with
//! foreign keys and indexes): protecting columns online (killed and resumed) and in
//! place, reverting, refusals, the generated view, blind-index lookups, IN and JOIN.
//! Every check compares decrypted values row by row with a plaintext copy saved first.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_dscsa_itest::{
    connect, connect_keeping_notices, count, erp_db, error_text, fresh_db, session_with_keys,
    sqlstate,
};
use postgres::Client;

/// Every unit decrypts to its saved serial, no unit is missing or extra.
fn assert_units_match(c: &mut Client) {
    let mismatched = count(
        c,
        "SELECT count(*) FROM unit u FULL JOIN saved_units s USING (id)
          WHERE u.id IS NULL OR s.id IS NULL OR dscsa_decrypt(u.serial) IS DISTINCT FROM s.serial",
    );
    assert_eq!(mismatched, 0, "units differ from the saved copy");
}

/// Every unit's protected note decrypts to its saved note as a lot number (the notes
/// were made valid lot numbers, without spaces, before their protection).
fn assert_notes_match(c: &mut Client) {
    let mismatched = count(
        c,
        "SELECT count(*) FROM unit u JOIN saved_units s USING (id)
          WHERE dscsa_decrypt(u.note) IS DISTINCT FROM replace(s.note, ' ', '')",
    );
    assert_eq!(mismatched, 0, "notes differ from the saved copy");
}

#[test]
fn online_protection_killed_mid_backfill_resumes_without_losing_a_row() {
    let (db, mut c) = erp_db("online_kill", 100_000);
    let blocks: i64 = count(&mut c, "SELECT pg_relation_size('unit') / 8192");

    // Run 1 in its own backend, with an application writing concurrently.
    let mut runner = session_with_keys(&db, "postgres", &["k", "bk"]);
    let runner_pid: i32 = runner
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let run1 = std::thread::spawn(move || {
        runner.batch_execute(
            "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', blind_index_key => 'bk', batch_size => 1000)",
        )
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (db, stop, writes) = (db.clone(), stop.clone(), writes.clone());
        std::thread::spawn(move || {
            // The application keeps writing plaintext; it holds dscsa_writer so that the
            // sync trigger can load the keys into its session.
            let mut w = connect(&db, "postgres");
            let mut i: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let mut tx = w.transaction().expect("tx");
                // A new unit, a changed serial, a deleted unit: mirrored in the saved copy.
                tx.execute(
                    "WITH n AS (INSERT INTO unit (id, lot_id, serial) VALUES ($1::bigint, 1, 'NEW' || $1::bigint) RETURNING id, serial, note)
                     INSERT INTO saved_units SELECT * FROM n",
                    &[&(1_000_000 + i)],
                )
                .expect("insert");
                let target = 1 + (i * 7919) % 100_000;
                tx.execute(
                    "UPDATE unit SET serial = 'CHG' || id WHERE id = $1",
                    &[&target],
                )
                .expect("update");
                tx.execute(
                    "UPDATE saved_units SET serial = 'CHG' || id WHERE id = $1",
                    &[&target],
                )
                .expect("update saved");
                // An update of another column only (the sync trigger does not fire): the row
                // may move to a block the backfill already walked, which the completeness
                // proof must catch.
                tx.execute(
                    "UPDATE unit SET status = 'shipped' WHERE id = $1",
                    &[&(1 + (i * 3571) % 100_000)],
                )
                .expect("update of another column during the backfill");
                let gone = 1 + (i * 104_729) % 100_000;
                tx.execute("DELETE FROM unit WHERE id = $1", &[&gone])
                    .expect("delete");
                tx.execute("DELETE FROM saved_units WHERE id = $1", &[&gone])
                    .expect("delete saved");
                tx.commit().expect("commit");
                writes.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // Kill the backend once about a third of the table is backfilled.
    let mut watcher = connect(&db, "postgres");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = watcher
            .query_opt(
                "SELECT next_block FROM dscsa.protected_columns WHERE relid::oid = 'unit'::regclass::oid AND column_name = 'serial'",
                &[],
            )
            .expect("progress")
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .unwrap_or(0);
        if done >= blocks / 3 {
            break;
        }
        assert!(Instant::now() < deadline, "backfill made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let writes_before_kill = writes.load(Ordering::SeqCst);
    watcher
        .execute("SELECT pg_terminate_backend($1)", &[&runner_pid])
        .expect("terminate");
    let killed = run1.join().expect("runner thread");
    assert!(killed.is_err(), "the first run should have been terminated");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(
        writes.load(Ordering::SeqCst) > writes_before_kill.max(1) / 2,
        "the application wrote nothing during the backfill"
    );

    // Mid-way state: backfilling, and no twin that disagrees with its plaintext.
    let state: String = c
        .query_one(
            "SELECT state FROM dscsa.protected_columns WHERE relid::oid = 'unit'::regclass::oid",
            &[],
        )
        .expect("state")
        .get(0);
    assert_eq!(state, "backfilling");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit WHERE serial_dscsa_new IS NOT NULL AND dscsa_decrypt(serial_dscsa_new) <> serial"
        ),
        0,
        "a twin disagrees with its plaintext"
    );
    let half_done = count(
        &mut c,
        "SELECT count(*) FROM unit WHERE serial_dscsa_new IS NOT NULL",
    );
    let total = count(&mut c, "SELECT count(*) FROM unit");
    assert!(
        half_done > 0 && half_done < total,
        "killed run did {half_done} of {total}"
    );
    // Options must match to resume.
    assert_eq!(
        sqlstate(c.batch_execute(
            "CALL dscsa.protect_column('unit', 'serial', kind => 'lot', blind_index_key => 'bk')"
        )),
        "55000"
    );

    // A row written with triggers disabled (as logical replication's apply can do) has no
    // twin and is invisible to the block walk; the completeness proof must catch it.
    c.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO unit (id, lot_id, serial) VALUES (3000000, 1, 'REPLICATED-1');
         RESET session_replication_role;
         INSERT INTO saved_units VALUES (3000000, 'REPLICATED-1', NULL);",
    )
    .expect("row without trigger");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit WHERE id = 3000000 AND serial_dscsa_new IS NULL"
        ),
        1
    );

    // Run 2 resumes and cuts over.
    c.batch_execute(
        "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', blind_index_key => 'bk', batch_size => 5000)",
    )
    .expect("resumed run");
    assert_units_match(&mut c);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit WHERE dscsa.envelope_kind(serial) <> 'serial'"
        ),
        0
    );
    let ty: String = c
        .query_one(
            "SELECT format_type(atttypid, atttypmod) || '/' || attnotnull FROM pg_attribute
              WHERE attrelid = 'unit'::regclass::oid AND attname = 'serial'",
            &[],
        )
        .expect("type")
        .get(0);
    assert_eq!(ty, "serial_encrypted/true", "search_path includes dscsa");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'unit'::regclass::oid AND attname = 'serial_dscsa_new'"),
        0
    );
    // Rerunning is a no-op.
    c.batch_execute(
        "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', blind_index_key => 'bk')",
    )
    .expect("idempotent");

    // The UNIQUE constraint was carried over to the blind index, under its own name.
    let def: String = c
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'unit_serial_key'",
            &[],
        )
        .expect("constraint")
        .get(0);
    assert_eq!(def, "UNIQUE (serial_bidx)");
    let some_serial: String = c
        .query_one(
            "SELECT serial FROM saved_units ORDER BY id LIMIT 1 OFFSET 500",
            &[],
        )
        .expect("serial")
        .get(0);
    assert_eq!(
        sqlstate(c.execute(
            "INSERT INTO unit (id, lot_id, serial) VALUES (9999999, 1, dscsa_encrypt_serial($1))",
            &[&some_serial]
        )),
        "23505"
    );
    // Foreign keys on the table still hold.
    assert_eq!(
        sqlstate(c.execute(
            "INSERT INTO unit (id, lot_id, serial) VALUES (9999998, 424242, dscsa_encrypt_serial('FRESH'))",
            &[]
        )),
        "23503"
    );
}

#[test]
fn in_place_protection_and_its_reverse_keep_every_value() {
    let (_db, mut c) = erp_db("in_place", 5_000);
    c.batch_execute(
        "CALL dscsa.protect_column('lot', 'lot_number', kind => 'lot', mode => 'in_place');
         CALL dscsa.protect_column('lot', 'expiry', mode => 'in_place');
         CALL dscsa.protect_column('unit', 'note', mode => 'in_place');",
    )
    .expect("protect in place");
    let mismatched = count(
        &mut c,
        "SELECT count(*) FROM lot l FULL JOIN saved_lots s USING (id)
          WHERE l.id IS NULL OR s.id IS NULL OR dscsa_decrypt(l.lot_number) <> s.lot_number
             OR dscsa_decrypt(l.expiry) <> to_char(s.expiry, 'YYYY-MM-DD')",
    );
    assert_eq!(mismatched, 0);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM lot WHERE dscsa.envelope_kind(expiry) <> 'expiry'"
        ),
        0,
        "a date column defaults to the expiry kind"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit u JOIN saved_units s USING (id) WHERE dscsa_decrypt(u.note) IS DISTINCT FROM s.note"
        ),
        0,
        "NULLs stay NULL"
    );
    // Reverse: back to the original types and values.
    c.batch_execute(
        "CALL dscsa.unprotect_column('lot', 'lot_number');
         CALL dscsa.unprotect_column('lot', 'expiry');",
    )
    .expect("unprotect");
    let types: String = c
        .query_one(
            "SELECT string_agg(attname::text || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attnum)
               FROM pg_attribute WHERE attrelid = 'lot'::regclass::oid AND attname IN ('lot_number', 'expiry')",
            &[],
        )
        .expect("types")
        .get(0);
    assert_eq!(types, "lot_number:character varying(20),expiry:date");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM lot l JOIN saved_lots s USING (id) WHERE (l.lot_number, l.expiry) <> (s.lot_number, s.expiry)"
        ),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dscsa.protected_columns WHERE relid::oid = 'lot'::regclass::oid"
        ),
        0
    );
}

#[test]
fn protection_is_refused_with_reasons_before_anything_changes() {
    let (_db, mut c) = erp_db("refuse", 100);
    c.batch_execute(
        "CREATE VIEW product_names AS SELECT gtin, name FROM product;
         CREATE TABLE shipment (id int PRIMARY KEY, gln text DEFAULT '0614141000005', sscc text, CHECK (sscc <> ''));
         CREATE INDEX shipment_multi ON shipment (sscc, id);",
    )
    .expect("setup");
    let cases = [
        ("'product', 'gtin'", "product_names"),
        ("'unit', 'serial'", "needs a blind index"),
        ("'unit', 'lot_id'", "is of type integer"),
        ("'shipment', 'gln'", "has a default"),
        (
            "'shipment', 'sscc'",
            "shipment_multi needs a blind index to be carried over",
        ),
        ("'unit', 'nosuch'", "does not exist"),
    ];
    for (args, reason) in cases {
        let err = error_text(c.batch_execute(&format!(
            "CALL dscsa.protect_column({args}, mode => 'in_place')"
        )));
        assert!(err.contains(reason), "{args}: {err}");
        assert!(err.contains("Nothing was changed"), "{args}: {err}");
    }
    assert!(
        error_text(c.batch_execute("CALL dscsa.protect_column('shipment', 'sscc')"))
            .contains("shipment_sscc_check")
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_attribute WHERE attrelid IN ('unit'::regclass, 'product'::regclass, 'shipment'::regclass) AND atttypid::regtype::text LIKE 'dscsa.%'"),
        0,
        "a refused protection changed a column"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns"),
        0
    );
    // A primary key is refused too (row identity stays plaintext).
    c.batch_execute("CREATE TABLE coded (code text PRIMARY KEY)")
        .expect("t");
    assert!(error_text(
        c.batch_execute("CALL dscsa.protect_column('coded', 'code', blind_index_key => 'bk')")
    )
    .contains("primary key"));
}

#[test]
fn generated_view_keeps_sql_working_with_grants_and_row_level_security() {
    let (db, mut c) = erp_db("view", 3_000);
    c.batch_execute(
        "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');
         SELECT dscsa.create_view('unit');
         DO $$ BEGIN CREATE ROLE itest_app_view LOGIN IN ROLE dscsa_reader, dscsa_writer;
               EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT SELECT, INSERT, UPDATE, DELETE ON unit, unit_plain TO itest_app_view;
         COMMENT ON VIEW unit_plain IS 'units, decrypted';
         ALTER TABLE unit ENABLE ROW LEVEL SECURITY;
         CREATE POLICY hide_destroyed ON unit USING (status <> 'destroyed');
         UPDATE unit SET status = 'destroyed' WHERE id <= 10;",
    )
    .expect("setup");
    let mut app = session_with_keys(&db, "itest_app_view", &["k", "bk"]);
    // Same SELECT the application used to run against the plaintext table.
    let serial: String = app
        .query_one("SELECT serial FROM unit_plain WHERE id = 42", &[])
        .expect("select")
        .get(0);
    let saved: String = c
        .query_one("SELECT serial FROM saved_units WHERE id = 42", &[])
        .expect("saved")
        .get(0);
    assert_eq!(serial, saved);
    // Row-level security applies through the view (security_invoker).
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM unit_plain WHERE id <= 10"),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM unit_plain WHERE id <= 10"),
        10,
        "superuser bypasses RLS"
    );
    // Writes through the view encrypt; RETURNING sees the plaintext.
    let back: String = app
        .query_one(
            "INSERT INTO unit_plain (id, lot_id, serial) VALUES (500000, 3, 'VIEW-NEW') RETURNING serial",
            &[],
        )
        .expect("insert through view")
        .get(0);
    assert_eq!(back, "VIEW-NEW");
    app.execute(
        "UPDATE unit_plain SET serial = 'VIEW-CHG', status = 'shipped' WHERE id = 500000",
        &[],
    )
    .expect("update through view");
    let (kind, plain): (String, String) = {
        let r = c
            .query_one("SELECT dscsa.envelope_kind(serial), dscsa_decrypt(serial) FROM unit WHERE id = 500000", &[])
            .expect("stored");
        (r.get(0), r.get(1))
    };
    assert_eq!((kind.as_str(), plain.as_str()), ("serial", "VIEW-CHG"));
    // The blind index followed the update: the rewritten lookup finds the new value.
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM unit WHERE serial_bidx = ANY (dscsa.blind_index_candidates('VIEW-CHG', 'bk', 'serial'))"),
        1
    );
    // Uniqueness holds through the view.
    assert_eq!(
        sqlstate(app.execute(
            "INSERT INTO unit_plain (id, lot_id, serial) VALUES (500001, 3, 'VIEW-CHG')",
            &[]
        )),
        "23505"
    );
    app.execute("DELETE FROM unit_plain WHERE id = 500000", &[])
        .expect("delete through view");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM unit WHERE id = 500000"),
        0
    );
    // A role without the grant is refused by the table's own privileges.
    let mut nobody = connect(&db, "itest_nobody");
    assert_eq!(
        sqlstate(nobody.query("SELECT * FROM unit_plain", &[])),
        "42501"
    );

    // Regenerating keeps security_invoker, grants and the comment.
    c.query_one("SELECT dscsa.create_view('unit')", &[])
        .expect("regenerate");
    let (opts, acl, comment): (Vec<String>, String, String) = {
        let r = c
            .query_one(
                "SELECT reloptions, relacl::text, obj_description(oid, 'pg_class') FROM pg_class WHERE oid = 'unit_plain'::regclass::oid",
                &[],
            )
            .expect("view meta");
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(opts, vec!["security_invoker=true".to_string()]);
    assert!(acl.contains("itest_app_view=arwd/"), "{acl}");
    assert_eq!(comment, "units, decrypted");
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM unit_plain WHERE id <= 10"),
        0
    );

    // The README's rewritten query uses the blind index (checked on the plan).
    c.batch_execute("SET enable_seqscan = off")
        .expect("no seqscan");
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT u.id, u.status FROM unit u
              WHERE u.serial_bidx = ANY (dscsa.blind_index_candidates($1, 'bk', 'serial'))
                AND dscsa.dscsa_decrypt(u.serial) = $1",
            &[&saved],
        )
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("unit_serial_key")),
        "{plan:?}"
    );
    c.batch_execute("RESET enable_seqscan").expect("reset");
}

#[test]
fn blind_index_equality_in_and_join() {
    let (_db, mut c) = erp_db("bidx", 2_000);
    c.batch_execute(
        "CREATE TABLE return_request (id serial PRIMARY KEY, serial text NOT NULL);
         INSERT INTO return_request (serial) SELECT serial FROM saved_units WHERE id % 100 = 0;
         INSERT INTO return_request (serial) VALUES ('NOT-OURS');
         CALL dscsa.protect_column('unit', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');
         CALL dscsa.protect_column('return_request', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');",
    )
    .expect("setup");
    let (a, b): (String, String) = {
        let r = c
            .query_one("SELECT (SELECT serial FROM saved_units WHERE id = 5), (SELECT serial FROM saved_units WHERE id = 6)", &[])
            .expect("serials");
        (r.get(0), r.get(1))
    };
    let ids: Vec<i64> = c
        .query(
            "SELECT id FROM unit WHERE serial_bidx IN (dscsa.blind_index($1, 'bk', 'serial'), dscsa.blind_index($2, 'bk', 'serial')) ORDER BY id",
            &[&a, &b],
        )
        .expect("IN")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![5, 6]);
    // Normalization: surrounding whitespace does not matter.
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM unit WHERE serial_bidx = dscsa.blind_index('  {a} ', 'bk', 'serial')")),
        1
    );
    // JOIN on the blind indexes of two tables (same key, same kind).
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM return_request r JOIN unit u ON u.serial_bidx = r.serial_bidx"
        ),
        20
    );
    // A serial and a lot with the same characters do not share an index value.
    let (s, l): (Vec<u8>, Vec<u8>) = {
        let r = c
            .query_one("SELECT dscsa.blind_index('X1', 'bk', 'serial'), dscsa.blind_index('X1', 'bk', 'lot')", &[])
            .expect("kinds");
        (r.get(0), r.get(1))
    };
    assert_ne!(s, l);
    assert_eq!(s.len(), 4 + 16, "key id prefix + 16-byte MAC");
    // A data key cannot be used as a blind-index key.
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.blind_index('X1', 'k', 'serial')", &[])),
        "22023"
    );
}

#[test]
fn an_unfinished_online_protection_can_be_aborted_and_batched_calls_are_refused() {
    let (db, mut c) = erp_db("abort", 20_000);
    // Inside a transaction block the online mode refuses before changing anything.
    assert_eq!(
        sqlstate(c.batch_execute(
            "SELECT 1; CALL dscsa.protect_column('unit', 'note', kind => 'generic', mode => 'online')"
        )),
        "25001"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns"),
        0
    );

    interrupt_online_protection(
        &db,
        &mut c,
        "CALL dscsa.protect_column('unit', 'note', batch_size => 100)",
    );

    let state: String = c
        .query_one(
            "SELECT state FROM dscsa.protected_columns WHERE relid::oid = 'unit'::regclass::oid",
            &[],
        )
        .expect("state")
        .get(0);
    assert_eq!(state, "backfilling");
    assert!(
        count(
            &mut c,
            "SELECT count(*) FROM unit WHERE note_dscsa_new IS NOT NULL"
        ) > 0
    );
    // Abort: twin, trigger and registry entry go; the plaintext column is as it was.
    c.batch_execute("CALL dscsa.abort_protect_column('unit', 'note')")
        .expect("abort");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'unit'::regclass::oid AND attname = 'note_dscsa_new' AND NOT attisdropped"
        ),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'unit'::regclass::oid AND NOT tgisinternal"
        ),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns"),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit u JOIN saved_units s USING (id) WHERE u.note IS DISTINCT FROM s.note"
        ),
        0
    );
    // The column can be protected afresh; a generated view blocks reverting it.
    c.batch_execute("CALL dscsa.protect_column('unit', 'note', batch_size => 5000)")
        .expect("protect again");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit u JOIN saved_units s USING (id) WHERE dscsa_decrypt(u.note) IS DISTINCT FROM s.note"
        ),
        0
    );
    c.batch_execute("SELECT dscsa.create_view('unit')")
        .expect("view");
    assert_eq!(
        sqlstate(c.batch_execute("CALL dscsa.unprotect_column('unit', 'note')")),
        "2BP01"
    );
    c.batch_execute("SELECT dscsa.drop_view('unit')")
        .expect("drop view");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_proc WHERE proname = 'unit_plain_dscsa_write'"
        ),
        0,
        "the view's trigger function went with it"
    );
    assert_eq!(
        sqlstate(c.batch_execute("SELECT dscsa.drop_view('unit')")),
        "42704"
    );
    c.batch_execute("CALL dscsa.unprotect_column('unit', 'note')")
        .expect("unprotect");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit u JOIN saved_units s USING (id) WHERE u.note IS DISTINCT FROM s.note"
        ),
        0
    );
}

/// Starts `call`, an online protection of a column of `unit` (key 'k'), and interrupts it
/// half-way: once its setup has committed, another transaction locks a row near the end
/// of the table (id 19990: the table must have at least that many units), the backfill
/// waits there, and it is cancelled. Leaves the job in state 'backfilling'.
fn interrupt_online_protection(db: &str, c: &mut Client, call: &'static str) {
    let mut runner = session_with_keys(db, "postgres", &["k"]);
    let runner_pid: i32 = runner
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let run = std::thread::spawn(move || runner.batch_execute(call));
    let mut holder = connect(db, "postgres");
    while count(
        &mut holder,
        "SELECT count(*) FROM dscsa.protected_columns WHERE state = 'backfilling'",
    ) == 0
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut tx = holder.transaction().expect("tx");
    tx.execute("SELECT 1 FROM unit WHERE id = 19990 FOR UPDATE", &[])
        .expect("lock");
    std::thread::sleep(Duration::from_millis(500));
    c.execute("SELECT pg_cancel_backend($1)", &[&runner_pid])
        .expect("cancel");
    assert_eq!(sqlstate(run.join().expect("runner thread")), "57014");
    tx.rollback().expect("release");
}

/// The SQLSTATE and message of a statement that must fail with a server error.
fn failure<T: std::fmt::Debug>(result: Result<T, postgres::Error>) -> (String, String) {
    let err = result.expect_err("statement should have failed");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// Starts an online protection of `unit.note` as lot numbers (the notes made valid lot
/// numbers first: GS1 CSET 82 has no space) and interrupts it mid-backfill.
fn interrupt_lot_protection_of_notes(db: &str, c: &mut Client) {
    c.batch_execute("UPDATE unit SET note = replace(note, ' ', '')")
        .expect("notes as lot numbers");
    interrupt_online_protection(
        db,
        c,
        "CALL dscsa.protect_column('unit', 'note', kind => 'lot', batch_size => 100)",
    );
}

/// Runs `call` (as `postgres` with `keys` loaded) while an application transaction is
/// left open on `unit`, and checks that waiting for its lock does not queue the
/// application: reads and writes go on for longer than one lock attempt, and the call
/// completes once the transaction ends. `unchanged` must hold while it waits. Returns
/// how many rows the application marked 'checked'.
fn call_behind_open_transaction(
    db: &str,
    c: &mut Client,
    call: &'static str,
    keys: &[&str],
    unchanged: &str,
) -> i64 {
    let units = count(c, "SELECT count(*) FROM unit");
    // An application transaction left open on the table (idle in transaction after a
    // read): an ACCESS EXCLUSIVE lock cannot be had until it ends.
    let mut idle = connect(db, "postgres");
    idle.batch_execute("BEGIN; SELECT count(*) FROM unit")
        .expect("open transaction");

    let mut runner = session_with_keys(db, "postgres", keys);
    let run = std::thread::spawn(move || runner.batch_execute(call));
    // Until the call asks for its lock.
    let asked = Instant::now();
    while count(
        c,
        "SELECT count(*) FROM pg_locks WHERE relation = 'unit'::regclass::oid AND mode = 'AccessExclusiveLock' AND NOT granted",
    ) == 0
    {
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "{call}: never asked for its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The application goes on reading and writing for longer than one of the call's
    // 2-second lock attempts. A lock request that simply waited would queue every one of
    // these statements behind it until the open transaction ends, and lock_timeout (5 s)
    // would fail them; each attempt that gives up lets them through.
    let mut app = connect(db, "postgres");
    app.batch_execute("SET lock_timeout = '5s'")
        .expect("app settings");
    let mut statements: i64 = 0;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        statements += 1;
        let id = 1 + statements % units;
        app.execute("UPDATE unit SET status = 'checked' WHERE id = $1", &[&id])
            .unwrap_or_else(|e| panic!("{call}: the application was queued behind it: {e}"));
        app.query_one("SELECT status FROM unit WHERE id = $1", &[&id])
            .unwrap_or_else(|e| panic!("{call}: the application was queued behind it: {e}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !run.is_finished(),
        "{call}: cannot have run while the transaction was open"
    );
    assert_eq!(
        count(c, unchanged),
        1,
        "{call}: changed something before it had the lock"
    );

    idle.batch_execute("COMMIT").expect("end the transaction");
    run.join()
        .expect("runner thread")
        .unwrap_or_else(|e| panic!("{call}: should complete once the transaction ends: {e}"));
    statements.min(units)
}

#[test]
fn online_protection_waits_for_an_open_transaction_without_queueing_the_application() {
    let (db, mut c) = erp_db("lock_queue", 2_000);
    let checked = call_behind_open_transaction(
        &db,
        &mut c,
        "CALL dscsa.protect_column('unit', 'note', batch_size => 5000)",
        &["k"],
        "SELECT count(*) + 1 FROM dscsa.protected_columns",
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit u FULL JOIN saved_units s USING (id)
              WHERE u.id IS NULL OR s.id IS NULL OR dscsa_decrypt(u.note) IS DISTINCT FROM s.note"
        ),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM unit WHERE status = 'checked'"),
        checked,
        "every application write is there"
    );
}

#[test]
fn abort_and_unprotect_wait_for_an_open_transaction_without_queueing_the_application() {
    let (db, mut c) = erp_db("lock_queue_undo", 20_000);
    interrupt_online_protection(
        &db,
        &mut c,
        "CALL dscsa.protect_column('unit', 'note', batch_size => 100)",
    );

    call_behind_open_transaction(
        &db,
        &mut c,
        "CALL dscsa.abort_protect_column('unit', 'note')",
        &[],
        "SELECT count(*) FROM dscsa.protected_columns WHERE state = 'backfilling'",
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns"),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'unit'::regclass::oid AND attname LIKE 'note\\_%' AND NOT attisdropped"
        ),
        0,
        "the twin column is gone"
    );

    // Protected in place, then reverted: the rewrite waits the same way.
    let mut owner = session_with_keys(&db, "postgres", &["k"]);
    owner
        .batch_execute("CALL dscsa.protect_column('unit', 'note', mode => 'in_place')")
        .expect("protect in place");
    call_behind_open_transaction(
        &db,
        &mut c,
        "CALL dscsa.unprotect_column('unit', 'note')",
        &["k"],
        "SELECT count(*) FROM dscsa.protected_columns WHERE state = 'protected'",
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM unit u FULL JOIN saved_units s USING (id)
              WHERE u.id IS NULL OR s.id IS NULL OR u.note IS DISTINCT FROM s.note"
        ),
        0,
        "the plaintext is back, row for row"
    );
    // The caller's lock_timeout is its own again after a call inside its transaction.
    owner
        .batch_execute(
            "BEGIN; SET LOCAL lock_timeout = '7s';
             CALL dscsa.protect_column('unit', 'note', mode => 'in_place');",
        )
        .expect("protect in place inside a transaction");
    let timeout: String = owner
        .query_one("SHOW lock_timeout", &[])
        .expect("show")
        .get(0);
    assert_eq!(timeout, "7s");
    owner.batch_execute("COMMIT").expect("commit");
}

#[test]
fn generated_view_writes_tables_with_identity_and_generated_columns() {
    let (_db, mut c) = fresh_db("view_identity");
    c.batch_execute(
        "SELECT dscsa.create_blind_index_key('bk');
         SELECT dscsa.load_key('bk');
         CREATE TABLE stock_lot (
             id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             name text NOT NULL,
             product_id integer NOT NULL,
             ref bigint GENERATED BY DEFAULT AS IDENTITY,
             label text GENERATED ALWAYS AS ('P' || product_id) STORED,
             UNIQUE (name, product_id));
         INSERT INTO stock_lot (name, product_id) VALUES ('L1', 1);
         CALL dscsa.protect_column('stock_lot', 'name', kind => 'lot', mode => 'in_place', blind_index_key => 'bk');
         SELECT dscsa.create_view('stock_lot');",
    )
    .expect("setup");
    // The application's INSERT leaves the identity and generated columns to the table and
    // reads them back, as it did on the table itself.
    let r = c
        .query_one(
            "INSERT INTO stock_lot_plain (name, product_id) VALUES ('L2', 2) RETURNING id, ref, label, name",
            &[],
        )
        .expect("insert through the view");
    let (id, reference, label, name): (i32, i64, String, String) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(
        (id, reference, label.as_str(), name.as_str()),
        (2, 2, "P2", "L2")
    );
    let r = c
        .query_one(
            "INSERT INTO stock_lot_plain (name, product_id, ref) VALUES ('L3', 3, 100) RETURNING id, ref",
            &[],
        )
        .expect("a BY DEFAULT identity takes a given value");
    assert_eq!((r.get::<_, i32>(0), r.get::<_, i64>(1)), (3, 100));
    // Values the table would refuse are refused with its SQLSTATE.
    assert_eq!(
        sqlstate(c.execute(
            "INSERT INTO stock_lot_plain (id, name, product_id) VALUES (50, 'L4', 4)",
            &[]
        )),
        "428C9"
    );
    assert_eq!(
        sqlstate(c.execute(
            "INSERT INTO stock_lot_plain (name, product_id, label) VALUES ('L4', 4, 'X')",
            &[]
        )),
        "428C9"
    );
    assert_eq!(
        sqlstate(c.execute("UPDATE stock_lot_plain SET id = 99 WHERE id = 2", &[])),
        "428C9"
    );
    // An UPDATE recomputes the generated column, and RETURNING shows the new value.
    let r = c
        .query_one(
            "UPDATE stock_lot_plain SET name = 'L2b', product_id = 5 WHERE id = 2 RETURNING label, name",
            &[],
        )
        .expect("update through the view");
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1)),
        ("P5".to_string(), "L2b".to_string())
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM stock_lot WHERE id = 2 AND dscsa_decrypt(name) = 'L2b' AND label = 'P5'"
        ),
        1
    );
    // The duplicate rule of the composite UNIQUE holds through the view.
    assert_eq!(
        sqlstate(c.execute(
            "INSERT INTO stock_lot_plain (name, product_id) VALUES ('L3', 3)",
            &[]
        )),
        "23505"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM stock_lot_plain"), 3);
}

#[test]
fn online_protection_of_a_field_kind_never_rewrites_the_table() {
    let (db, mut c) = erp_db("no_rewrite", 20_000);
    let filenode = |c: &mut Client| -> i64 {
        c.query_one("SELECT pg_relation_filenode('unit')::int8", &[])
            .expect("filenode")
            .get(0)
    };
    let before = filenode(&mut c);
    // PostgreSQL 15 rewrites a table to add a column of a domain with a CHECK: the twin
    // is added as dscsa.encrypted and given its domain type at the cutover instead.
    let (mut owner, notices) = connect_keeping_notices(&db, "postgres");
    owner
        .batch_execute(
            "SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k'), dscsa.load_key('bk');
             SET client_min_messages = debug1",
        )
        .expect("session");
    owner
        .batch_execute(
            "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', blind_index_key => 'bk', batch_size => 5000)",
        )
        .expect("protect online");
    owner
        .batch_execute("SET client_min_messages = notice")
        .expect("session");
    assert_eq!(filenode(&mut c), before, "the table was rewritten");
    // The cutover reads no rows under its lock: the completeness check, validated before
    // it without blocking writes, proves every twin's kind and the NOT NULL.
    let said = notices.lock().map(|n| n.join("\n")).unwrap_or_default();
    assert!(
        said.contains(
            "public.unit.serial: the validated completeness check proves that every twin holds serial"
        ) && !said.contains("reading every twin"),
        "{said}"
    );
    assert!(
        said.contains("are sufficient to prove that it does not contain nulls")
            && said.matches("verifying table \"unit\"").count() == 1,
        "one scan (the check's validation, before the cutover): {said}"
    );
    assert_units_match(&mut c);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_attribute a
              WHERE a.attrelid = 'unit'::regclass::oid AND a.attname = 'serial'
                AND a.atttypid = 'dscsa.serial_encrypted'::regtype::oid
                AND (SELECT d.refobjid FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass::oid AND d.objid = a.attrelid
                        AND d.objsubid = a.attnum AND d.refclassid = 'pg_type'::regclass::oid)
                    = 'dscsa.serial_encrypted'::regtype::oid"
        ),
        1,
        "the column and its type dependency are dscsa.serial_encrypted"
    );
    // The domain's CHECK holds for new values (the relation's cached descriptor changed).
    assert_eq!(
        sqlstate(owner.execute(
            "UPDATE unit SET serial = dscsa.dscsa_encrypt_lot('L1') WHERE id = 1",
            &[]
        )),
        "23514"
    );
    // Nothing else can change a column's type this way: not after the protection, and
    // not as a role that does not own the table.
    assert_eq!(
        sqlstate(c.execute("SELECT dscsa._retype_twin('unit', 'serial')", &[])),
        "55000"
    );
    let mut writer = connect(&db, "itest_writer");
    assert_eq!(
        sqlstate(writer.execute("SELECT dscsa._retype_twin('unit', 'serial')", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(writer.execute("SELECT dscsa._retype_twin_apply('unit', 'serial')", &[])),
        "42501"
    );

    // A twin written other than by the protection (here a serial's envelope in a lot
    // protection's twin) stops the cutover before anything changes.
    interrupt_lot_protection_of_notes(&db, &mut c);
    c.batch_execute(
        "SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k');
         UPDATE unit SET note_dscsa_new = dscsa.dscsa_encrypt_serial('SN1') WHERE id = 7",
    )
    .expect("write the twin directly");
    let note_protection =
        "CALL dscsa.protect_column('unit', 'note', kind => 'lot', batch_size => 100)";
    let note_untouched = |c: &mut Client| {
        assert_eq!(
            count(
                c,
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'unit'::regclass::oid AND attname = 'note' AND atttypid = 'text'::regtype::oid"
            ),
            1,
            "the plaintext column is untouched"
        );
    };
    let mut resume = session_with_keys(&db, "postgres", &["k"]);
    let (code, message) = failure(resume.batch_execute(note_protection));
    assert_eq!(code, "23514");
    assert!(
        message.contains("holds values of another field kind than lot"),
        "{message}"
    );
    note_untouched(&mut c);
    c.batch_execute("CALL dscsa.abort_protect_column('unit', 'note')")
        .expect("abort");

    // A protection whose completeness check is not the one this version makes (started
    // by an earlier version, or the check replaced by the table's owner): the cutover
    // reads every twin under its lock instead of trusting the check, and finds a wrong one.
    interrupt_online_protection(&db, &mut c, note_protection);
    c.batch_execute(
        "ALTER TABLE unit ADD CONSTRAINT note_dscsa_new_check CHECK (note IS NULL OR note_dscsa_new IS NOT NULL) NOT VALID;
         UPDATE unit SET note_dscsa_new = dscsa.dscsa_encrypt_serial('SN1') WHERE id = 7",
    )
    .expect("an earlier version's check, and a twin written directly");
    let (code, message) = failure(resume.batch_execute(note_protection));
    assert_eq!(code, "23514");
    assert!(
        message.contains(
            "1 rows of public.unit.note_dscsa_new hold a value of another field kind than lot"
        ),
        "{message}"
    );
    note_untouched(&mut c);
    // Written again through its plaintext, the row gets its right twin, and the same
    // call finishes after reading every twin.
    c.batch_execute("UPDATE unit SET note = note, note_dscsa_new = NULL WHERE id = 7")
        .expect("rewrite the row");
    let (mut finisher, notices) = connect_keeping_notices(&db, "postgres");
    finisher
        .batch_execute(
            "SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k'); SET client_min_messages = debug1",
        )
        .expect("session");
    finisher.batch_execute(note_protection).expect("finish");
    let said = notices.lock().map(|n| n.join("\n")).unwrap_or_default();
    assert!(
        said.contains("public.unit.note: reading every twin to prove that it holds lot"),
        "{said}"
    );
    assert_notes_match(&mut c);
    assert_eq!(filenode(&mut c), before, "the table was rewritten");
}

#[test]
fn a_column_storing_the_table_row_type_stops_protection_before_anything_changes() {
    let (db, mut c) = erp_db("row_type", 20_000);
    // Stored values of the row type would keep the twin's old column type unchecked
    // (ALTER COLUMN TYPE refuses such a table too): the dry run names the column...
    c.batch_execute("CREATE TABLE unit_snapshot (taken timestamptz, u unit)")
        .expect("snapshot table");
    let problems: String = c
        .query_one(
            "SELECT coalesce(string_agg(p, E'\\n'), '') FROM dscsa.protect_column_problems('unit', 'note') p",
            &[],
        )
        .expect("problems")
        .get(0);
    assert!(
        problems.contains(
            "column u of table public.unit_snapshot stores values of the row type of public.unit"
        ),
        "{problems}"
    );
    // ... and the call refuses it in either mode with nothing changed.
    let mut owner = session_with_keys(&db, "postgres", &["k"]);
    for mode in ["in_place", "online"] {
        let err = owner.batch_execute(&format!(
            "CALL dscsa.protect_column('unit', 'note', kind => 'generic', mode => '{mode}')"
        ));
        assert_eq!(sqlstate(err), "55000", "{mode}");
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns"),
        0
    );
    c.batch_execute("DROP TABLE unit_snapshot").expect("drop");

    // A use that appears during an online protection (here through an array of a domain
    // over the row type) stops its cutover; the twin keeps its type until it is gone.
    interrupt_lot_protection_of_notes(&db, &mut c);
    c.batch_execute(
        "CREATE DOMAIN unit_row AS unit;
         CREATE TABLE unit_history (at timestamptz, rows unit_row[])",
    )
    .expect("history table");
    let twin_is_untyped = |c: &mut Client| -> bool {
        c.query_one(
            "SELECT atttypid = 'dscsa.encrypted'::regtype::oid FROM pg_attribute
              WHERE attrelid = 'unit'::regclass::oid AND attname = 'note_dscsa_new'",
            &[],
        )
        .expect("twin type")
        .get(0)
    };
    let mut resume = session_with_keys(&db, "postgres", &["k"]);
    let call = "CALL dscsa.protect_column('unit', 'note', kind => 'lot', batch_size => 100)";
    let (code, message) = failure(resume.batch_execute(call));
    assert_eq!(code, "0A000");
    assert!(
        message.contains("column rows of table public.unit_history"),
        "the error names the column: {message}"
    );
    assert!(twin_is_untyped(&mut c), "the twin is still dscsa.encrypted");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dscsa.protected_columns WHERE state = 'backfilling'"
        ),
        1,
        "the protection can still finish or be aborted"
    );
    c.batch_execute("DROP TABLE unit_history; DROP DOMAIN unit_row")
        .expect("drop");
    resume.batch_execute(call).expect("finish");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'unit'::regclass::oid
                AND attname = 'note' AND atttypid = 'dscsa.lot_encrypted'::regtype::oid"
        ),
        1
    );
    c.batch_execute("SELECT dscsa.load_key('k')")
        .expect("load key");
    assert_notes_match(&mut c);
}
