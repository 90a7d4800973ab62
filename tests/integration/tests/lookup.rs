//! Transparent blind-index lookups (issue 10, src/lookup.rs): an ERP's own queries,
//! unchanged, use the blind index of a protected column through the generated view or
//! written against dscsa_decrypt directly; the rewrite never changes a result (every
//! query of a generated set returns the same rows with it on and off, during a
//! blind-index key rotation too), and it stays out of the way where it cannot help.

use pg_dscsa_itest::{
    compares_blind_index, count, explain, fresh_db, refused_as_stale_plan, session_with_keys,
    sqlstate, READER, WRITER,
};
use postgres::Client;

/// An inventory schema in the style of an ERP: lots named per product, move lines that
/// name a lot by text, and a copy of the plaintext to compare with.
fn inventory(tag: &str) -> (String, Client) {
    let (db, mut c) = fresh_db(tag);
    c.batch_execute(
        "SELECT dscsa.create_blind_index_key('bk');
         SELECT dscsa.grant_key('bk', 'dscsa_writer', 'blind_index'), dscsa.grant_key('bk', 'dscsa_reader', 'blind_index');
         SELECT dscsa.load_key('bk');
         CREATE TABLE stock_lot (id int PRIMARY KEY, name text NOT NULL, product_id int NOT NULL, note text);
         CREATE INDEX stock_lot_name_idx ON stock_lot (name);
         INSERT INTO stock_lot SELECT i, 'LOT-' || (i % 4000), i % 50, CASE WHEN i % 3 = 0 THEN 'n' || i END
           FROM generate_series(1, 8000) i;
         CREATE TABLE move_line (id int PRIMARY KEY, lot_name text, qty int);
         INSERT INTO move_line SELECT i, CASE WHEN i % 9 = 0 THEN NULL ELSE 'LOT-' || (i * 37 % 4200) END, i
           FROM generate_series(1, 60) i;
         CREATE TABLE plain_lot AS SELECT * FROM stock_lot;
         CREATE INDEX ON plain_lot (name);
         CALL dscsa.protect_column('stock_lot', 'name', kind => 'lot', mode => 'in_place', blind_index_key => 'bk');
         CALL dscsa.protect_column('stock_lot', 'note', mode => 'in_place');
         SELECT dscsa.create_view('stock_lot');
         GRANT SELECT, INSERT, UPDATE ON stock_lot, stock_lot_plain, move_line, plain_lot TO dscsa_reader, dscsa_writer;
         ANALYZE stock_lot, move_line, plain_lot;",
    )
    .expect("inventory");
    (db, c)
}

fn plan(c: &mut Client, sql: &str) -> String {
    explain(c, "COSTS OFF", sql)
}

/// The plan as executed (which partitions ran).
fn explain_analyze(c: &mut Client, sql: &str) -> String {
    explain(c, "ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF", sql)
}

fn uses_blind_index(plan: &str) -> bool {
    uses_blind_index_on(plan, "name_bidx")
}

fn uses_blind_index_on(plan: &str, column: &str) -> bool {
    // (The schema prints only when dscsa is not on the search_path.)
    compares_blind_index(plan, column)
        && (plan.contains("blind_index_candidates(") || plan.contains("_blind_index_slot("))
        && plan.contains("Index")
}

/// The rows of `sql`, each printed, sorted.
fn rows(c: &mut Client, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = c
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_applications_own_queries_use_the_blind_index() {
    let (db, _su) = inventory("lookup_app");
    let mut app = session_with_keys(&db, READER, &["k", "bk"]);
    let lookups = [
        "SELECT id, product_id FROM stock_lot_plain WHERE name = 'LOT-77'",
        "SELECT id FROM stock_lot_plain WHERE 'LOT-77' = name AND product_id = 27",
        "SELECT id FROM stock_lot_plain WHERE name IN ('LOT-77', 'LOT-78', 'NO-SUCH')",
        "SELECT id FROM stock_lot_plain WHERE name = ANY (ARRAY['LOT-77', 'LOT-78'])",
        "SELECT id FROM stock_lot WHERE dscsa.dscsa_decrypt(name) = 'LOT-77'",
        "SELECT s.id FROM (SELECT * FROM stock_lot_plain WHERE product_id < 40) s WHERE s.name = 'LOT-77'",
    ];
    for sql in lookups {
        let p = plan(&mut app, sql);
        assert!(uses_blind_index(&p), "{sql}\n{p}");
        // The decrypted comparison stays as the recheck.
        assert!(p.contains("dscsa_decrypt"), "{sql}\n{p}");
    }
    assert_eq!(
        rows(&mut app, lookups[0]),
        rows(
            &mut app,
            "SELECT id, product_id FROM plain_lot WHERE name = 'LOT-77'"
        )
    );
    assert_eq!(rows(&mut app, lookups[2]).len(), 4);

    // A prepared statement with a generic plan: the index condition takes the parameter,
    // and the candidates are computed once per execution (an index scan key).
    app.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE by_name(text) AS SELECT id FROM stock_lot_plain WHERE name = $1;",
    )
    .expect("prepare");
    let p = plan(&mut app, "EXECUTE by_name('LOT-5')");
    assert!(uses_blind_index(&p) && p.contains("$1"), "{p}");
    assert_eq!(
        rows(&mut app, "EXECUTE by_name('LOT-5')"),
        rows(&mut app, "SELECT id FROM plain_lot WHERE name = 'LOT-5'")
    );
    let stmt = app
        .prepare("SELECT count(*) FROM stock_lot_plain WHERE name = $1")
        .expect("extended protocol");
    for lot in ["LOT-1", "LOT-3999", "LOT-4000"] {
        let n: i64 = app.query_one(&stmt, &[&lot]).expect("bound").get(0);
        assert_eq!(n, if lot == "LOT-4000" { 0 } else { 2 }, "{lot}");
    }

    // A join on the lot name column, through the view and written directly: one index
    // probe per move line.
    for sql in [
        "SELECT m.id, l.id FROM move_line m JOIN stock_lot_plain l ON l.name = m.lot_name",
        "SELECT m.id, l.id FROM move_line m JOIN stock_lot l ON dscsa.dscsa_decrypt(l.name) = m.lot_name",
        "SELECT m.id, l.id FROM move_line m, stock_lot_plain l WHERE m.lot_name = l.name AND m.qty < 30",
    ] {
        let p = plan(&mut app, sql);
        assert!(uses_blind_index(&p) && p.contains("Nested Loop"), "{sql}\n{p}");
    }
    assert_eq!(
        rows(
            &mut app,
            "SELECT m.id, l.id FROM move_line m JOIN stock_lot_plain l ON l.name = m.lot_name"
        ),
        rows(
            &mut app,
            "SELECT m.id, l.id FROM move_line m JOIN plain_lot l ON l.name = m.lot_name"
        )
    );
}

#[test]
fn writes_through_the_view_and_duplicates() {
    let (db, mut su) = inventory("lookup_writes");
    su.batch_execute(
        "CREATE TABLE batch (id int PRIMARY KEY, code text NOT NULL UNIQUE);
         INSERT INTO batch SELECT i, 'B-' || i FROM generate_series(1, 500) i;
         CALL dscsa.protect_column('batch', 'code', kind => 'lot', mode => 'in_place', blind_index_key => 'bk');
         SELECT dscsa.create_view('batch');
         GRANT SELECT, INSERT, UPDATE ON batch, batch_plain TO dscsa_reader, dscsa_writer;",
    )
    .expect("unique lot codes");
    // The packaging line inserts through the view; the office reads and corrects.
    let mut line = session_with_keys(&db, WRITER, &["k", "bk"]);
    line.batch_execute("INSERT INTO batch_plain (id, code) VALUES (501, 'B-501')")
        .expect("insert through the view");
    let mut office = session_with_keys(&db, READER, &["k", "bk"]);
    assert_eq!(
        count(
            &mut office,
            "SELECT count(*) FROM batch_plain WHERE code = 'B-501'"
        ),
        1
    );
    su.batch_execute(
        "SELECT dscsa.load_key('bk');
         UPDATE batch_plain SET code = 'B-7X' WHERE code = 'B-7';",
    )
    .expect("update through the view");
    assert_eq!(
        count(
            &mut office,
            "SELECT count(*) FROM batch_plain WHERE code = 'B-7X'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut office,
            "SELECT count(*) FROM batch_plain WHERE code = 'B-7'"
        ),
        0
    );
    assert!(uses_blind_index_on(
        &plan(
            &mut office,
            "SELECT id FROM batch_plain WHERE code = 'B-7X'"
        ),
        "code_bidx"
    ));
    let mut app = line;
    assert_eq!(
        sqlstate(app.batch_execute("INSERT INTO batch_plain (id, code) VALUES (502, 'B-8')")),
        "23505",
        "the carried UNIQUE constraint refuses a duplicate"
    );
}

/// A few hundred generated queries, each run with the rewrite on and off: the same rows.
/// The set mixes lookups that match and that do not, NULLs, spellings that differ only
/// in case or whitespace, IN lists, joins, OR (not rewritten), subqueries, whole-row
/// references, a generic column (hashed under any kind) and rows indexed under two
/// versions of the blind-index key (a rotation in progress).
#[test]
fn the_rewrite_never_changes_a_result() {
    let (db, mut su) = inventory("lookup_equiv");
    su.batch_execute(
        "CREATE TABLE tag (id int PRIMARY KEY, label text);
         INSERT INTO tag SELECT i, CASE WHEN i % 11 = 0 THEN NULL ELSE 'T' || (i % 300) END FROM generate_series(1, 1500) i;
         CALL dscsa.protect_column('tag', 'label', mode => 'in_place', blind_index_key => 'bk');
         SELECT dscsa.create_view('tag');
         GRANT SELECT, INSERT ON tag, tag_plain TO dscsa_reader, dscsa_writer;",
    )
    .expect("generic column");
    // Rotation in progress: new rows are indexed under version 2, old ones stay on 1.
    su.batch_execute(
        "SELECT dscsa.rotate_key('bk'); SELECT dscsa.load_key('bk');
         INSERT INTO stock_lot_plain (id, name, product_id) SELECT 9000 + i, 'LOT-' || i, 1 FROM generate_series(1, 40) i;
         INSERT INTO plain_lot (id, name, product_id) SELECT 9000 + i, 'LOT-' || i, 1 FROM generate_series(1, 40) i;
         INSERT INTO tag_plain (id, label) VALUES (5000, 'T7'), (5001, 'T-new');",
    )
    .expect("rotation");
    assert_eq!(
        count(
            &mut su,
            "SELECT count(DISTINCT substring(name_bidx from 1 for 4)) FROM stock_lot"
        ),
        2,
        "rows indexed under two key versions"
    );
    let mut app = session_with_keys(&db, READER, &["k", "bk"]);
    let values = [
        "'LOT-1'",
        "'LOT-7'",
        "'LOT-3999'",
        "'LOT-4001'",
        "'lot-7'",
        "' LOT-7'",
        "'LOT-7 '",
        "NULL",
        "'LOT-20'",
        "''",
    ];
    let mut queries = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let w = values[(i + 3) % values.len()];
        queries.extend([
            format!("SELECT id, name, product_id FROM stock_lot_plain WHERE name = {v}"),
            format!("SELECT id FROM stock_lot_plain WHERE {v} = name"),
            format!("SELECT id FROM stock_lot_plain WHERE name IN ({v}, {w})"),
            format!("SELECT id FROM stock_lot_plain WHERE name = {v} OR product_id = 3"),
            format!("SELECT id FROM stock_lot_plain WHERE name <> {v} AND product_id = 3"),
            format!("SELECT id FROM stock_lot WHERE dscsa.dscsa_decrypt(name) = {v}"),
            format!("SELECT id FROM stock_lot WHERE dscsa.dscsa_try_decrypt(name) = {v}::text"),
            format!("SELECT l FROM stock_lot_plain l WHERE name = {v}"),
            format!("SELECT count(*) FROM stock_lot_plain WHERE name = {v}"),
            format!("SELECT id FROM (SELECT * FROM stock_lot_plain WHERE product_id > 10) s WHERE s.name = {v}"),
            format!("SELECT id FROM stock_lot_plain WHERE name = coalesce({v}, 'LOT-2')"),
            format!("SELECT m.id, l.id FROM move_line m LEFT JOIN stock_lot_plain l ON l.name = m.lot_name AND l.name <> {v}"),
            format!("SELECT m.id, l.id FROM stock_lot_plain l RIGHT JOIN move_line m ON l.name = m.lot_name WHERE m.qty > 5 AND l.name IS DISTINCT FROM {v}"),
            format!("SELECT id FROM tag_plain WHERE label = replace({v}, 'LOT-', 'T')"),
            format!("SELECT id FROM tag WHERE dscsa.dscsa_decrypt(label) IN ('T7', replace({v}, 'LOT-', 'T'))"),
            format!("SELECT id FROM stock_lot_plain WHERE name = (SELECT {v}::text)"),
            format!("WITH w AS (SELECT name FROM stock_lot_plain WHERE name = {v}) SELECT count(*) FROM w"),
            format!("SELECT id FROM stock_lot_plain WHERE EXISTS (SELECT 1 FROM move_line m WHERE m.lot_name = stock_lot_plain.name) AND name <> {v}"),
            format!("SELECT id FROM stock_lot_plain WHERE name = {v} COLLATE \"C\""),
            format!("SELECT DISTINCT name FROM stock_lot_plain WHERE name IN ({v}, 'LOT-9') ORDER BY 1 LIMIT 3"),
        ]);
    }
    for lot in 0..150 {
        queries.push(format!(
            "SELECT m.id, l.id, l.name FROM move_line m JOIN stock_lot_plain l ON l.name = m.lot_name WHERE m.id % 150 = {lot} OR l.name = 'LOT-{lot}'"
        ));
    }
    assert!(queries.len() >= 300, "{}", queries.len());
    let mut rewritten = 0;
    for sql in &queries {
        app.batch_execute("SET dscsa.blind_index_rewrite = on")
            .expect("on");
        let on = rows(&mut app, sql);
        if plan(&mut app, sql).contains("blind_index") {
            rewritten += 1;
        }
        app.batch_execute("SET dscsa.blind_index_rewrite = off")
            .expect("off");
        assert!(
            !plan(&mut app, sql).contains("blind_index_candidates"),
            "{sql}"
        );
        let off = rows(&mut app, sql);
        assert_eq!(on, off, "{sql}");
    }
    assert!(
        rewritten >= 200,
        "only {rewritten} of {} queries used a blind index",
        queries.len()
    );
    // The rotation's rows are found by both versions' values.
    app.batch_execute("RESET dscsa.blind_index_rewrite")
        .expect("reset");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM stock_lot_plain WHERE name = 'LOT-7'"
        ),
        3
    );
}

#[test]
fn nothing_is_added_where_it_cannot_help() {
    let (db, mut su) = inventory("lookup_off");
    // No blind index on `note`: the comparison is planned as written.
    let p = plan(&mut su, "SELECT id FROM stock_lot_plain WHERE note = 'n3'");
    assert!(!p.contains("blind_index"), "{p}");
    // A session that has not loaded the blind-index key gets the query as written, and
    // the same rows.
    let mut without = session_with_keys(&db, READER, &["k"]);
    let sql = "SELECT id FROM stock_lot_plain WHERE name = 'LOT-7'";
    let p = plan(&mut without, sql);
    assert!(!p.contains("blind_index"), "{p}");
    assert_eq!(rows(&mut without, sql).len(), 2);
    // Nor for a role that may not read the blind-index column.
    su.batch_execute(
        "DO $$ BEGIN CREATE ROLE lookup_narrow; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT dscsa_reader TO lookup_narrow;
         REVOKE SELECT ON stock_lot FROM dscsa_reader;
         GRANT SELECT (id, name, product_id, note) ON stock_lot TO dscsa_reader;
         GRANT SELECT ON stock_lot_plain TO lookup_narrow;
         SELECT dscsa.grant_key('k', 'lookup_narrow', 'decrypt'), dscsa.grant_key('bk', 'lookup_narrow', 'blind_index');
         GRANT lookup_narrow TO itest_reader;",
    )
    .expect("column privileges");
    let mut narrow = session_with_keys(&db, READER, &[]);
    narrow
        .batch_execute(
            "SET ROLE lookup_narrow; SELECT dscsa.load_key('k'); SELECT dscsa.load_key('bk');",
        )
        .expect("narrow role");
    let p = plan(&mut narrow, sql);
    assert!(!p.contains("blind_index"), "{p}");
    assert_eq!(rows(&mut narrow, sql).len(), 2);
    // (The role stays, like the other test roles of the cluster.)
    su.batch_execute("REVOKE lookup_narrow FROM itest_reader")
        .expect("cleanup");
}

/// `units`, hash-partitioned four ways by its blind-index column (built by hand:
/// protect_column protects ordinary tables): partitions 0 and 1 here, 2 and 3 and the
/// indexes as `upper_partitions` makes them. 2,000 serials under the first version of
/// `bk`, then `SN77` again (id 5000) under a second. Needs `bk` created and loaded.
fn units_partitioned_by_blind_index(c: &mut Client, upper_partitions: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE units (id bigint, serial dscsa.serial_encrypted NOT NULL, serial_bidx bytea NOT NULL)
             PARTITION BY HASH (serial_bidx);
         CREATE TABLE units_0 PARTITION OF units FOR VALUES WITH (MODULUS 4, REMAINDER 0);
         CREATE TABLE units_1 PARTITION OF units FOR VALUES WITH (MODULUS 4, REMAINDER 1);
         {upper_partitions}
         -- The writer supplies the blind index (it routes the row); the trigger checks it.
         CREATE TRIGGER dscsa_bidx_serial BEFORE INSERT OR UPDATE OF serial, serial_bidx ON units
             FOR EACH ROW EXECUTE FUNCTION dscsa.blind_index_trigger('serial', 'serial_bidx', 'bk', '', 'k');
         INSERT INTO units SELECT i, dscsa.dscsa_encrypt_serial('SN' || i), dscsa.blind_index('SN' || i, 'bk', 'serial')
           FROM generate_series(1, 2000) i;
         SELECT dscsa.rotate_key('bk'); SELECT dscsa.load_key('bk');
         INSERT INTO units VALUES (5000, dscsa.dscsa_encrypt_serial('SN77'), dscsa.blind_index('SN77', 'bk', 'serial'));
         ANALYZE units;
"
    ))
    .expect("table partitioned by its blind index");
}

/// A table hash-partitioned by the blind-index column (built by hand: protect_column
/// protects ordinary tables): a lookup by value touches one partition, found at executor
/// start from the candidates, and still finds rows indexed under an older key version.
#[test]
fn a_lookup_on_a_table_partitioned_by_the_blind_index_touches_one_partition() {
    let (db, mut su) = fresh_db("lookup_partitioned");
    su.batch_execute(
        "SELECT dscsa.create_blind_index_key('bk');
         SELECT dscsa.grant_key('bk', 'dscsa_reader', 'blind_index');
         SELECT dscsa.load_key('bk');",
    )
    .expect("key");
    units_partitioned_by_blind_index(
        &mut su,
        "CREATE TABLE units_2 PARTITION OF units FOR VALUES WITH (MODULUS 4, REMAINDER 2);
         CREATE TABLE units_3 PARTITION OF units FOR VALUES WITH (MODULUS 4, REMAINDER 3);
         CREATE INDEX ON units (serial_bidx);",
    );
    su.batch_execute("GRANT SELECT ON units TO dscsa_reader;")
        .expect("grant");
    let mut app = session_with_keys(&db, READER, &["k", "bk"]);
    let sql = "SELECT id FROM units WHERE dscsa.dscsa_decrypt(serial) = 'SN77'";
    let analyzed = explain_analyze(&mut app, sql);
    // Two candidates (two key versions): at most two of the four partitions are scanned.
    let scanned = analyzed.matches("Index Scan").count() + analyzed.matches("Seq Scan").count();
    assert!(analyzed.contains("Subplans Removed: "), "{analyzed}");
    assert!(scanned <= 2, "{analyzed}");
    assert_eq!(
        rows(&mut app, sql),
        vec!["5000".to_string(), "77".to_string()]
    );
    // A generic plan prunes at executor start the same way.
    app.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE by_serial(text) AS SELECT id FROM units WHERE dscsa.dscsa_decrypt(serial) = $1;",
    )
    .expect("prepare");
    let generic = explain_analyze(&mut app, "EXECUTE by_serial('SN1999')");
    assert!(generic.contains("Subplans Removed: "), "{generic}");
    assert_eq!(
        rows(&mut app, "EXECUTE by_serial('SN1999')"),
        vec!["1999".to_string()]
    );
    // The same rows with the rewrite off (every partition, every row decrypted).
    app.batch_execute("SET dscsa.blind_index_rewrite = off")
        .expect("off");
    assert_eq!(
        rows(&mut app, sql),
        vec!["5000".to_string(), "77".to_string()]
    );
}

/// A table sharded by the blind-index column over postgres_fdw: two hash partitions
/// here, two on another server (a second database through a loopback connection). The
/// candidates are computed once per execution into parameters, which postgres_fdw sends
/// with the condition, so the remote server answers from its own blind index and returns
/// only the matching rows; run-time pruning skips the partitions the candidates cannot
/// be in. Also for a foreign table queried directly, IN lists, and generic plans.
#[test]
fn a_lookup_on_foreign_tables_is_sent_to_the_remote_server() {
    let (remote_db, mut remote) = fresh_db("lookup_shard");
    remote
        .batch_execute(
            "CREATE TABLE units_2 (id bigint, serial dscsa.serial_encrypted NOT NULL, serial_bidx bytea NOT NULL);
             CREATE TABLE units_3 (LIKE units_2);
             CREATE INDEX ON units_2 (serial_bidx); CREATE INDEX ON units_3 (serial_bidx);
             GRANT SELECT ON units_2, units_3 TO itest_reader;",
        )
        .expect("remote shard");
    let (db, mut su) = fresh_db("lookup_fdw");
    su.batch_execute(&format!(
        "CREATE EXTENSION postgres_fdw;
         CREATE SERVER shard FOREIGN DATA WRAPPER postgres_fdw
             OPTIONS (host '127.0.0.1', port '{port}', dbname '{remote_db}');
         CREATE USER MAPPING FOR postgres SERVER shard OPTIONS (user 'postgres');
         CREATE USER MAPPING FOR itest_reader SERVER shard OPTIONS (user 'itest_reader', password_required 'false');
         SELECT dscsa.create_blind_index_key('bk');
         SELECT dscsa.grant_key('bk', 'dscsa_reader', 'blind_index');
         SELECT dscsa.load_key('bk');
",
        port = pg_dscsa_itest::port()
    ))
    .expect("foreign server and key");
    units_partitioned_by_blind_index(
        &mut su,
        "CREATE FOREIGN TABLE units_2 PARTITION OF units FOR VALUES WITH (MODULUS 4, REMAINDER 2) SERVER shard;
         CREATE FOREIGN TABLE units_3 PARTITION OF units FOR VALUES WITH (MODULUS 4, REMAINDER 3) SERVER shard;
         CREATE INDEX ON units_0 (serial_bidx); CREATE INDEX ON units_1 (serial_bidx);",
    );
    su.batch_execute("GRANT SELECT ON units, units_2 TO dscsa_reader;")
        .expect("grant");
    let remote_rows = count(&mut remote, "SELECT count(*) FROM units_2")
        + count(&mut remote, "SELECT count(*) FROM units_3");
    assert!(
        remote_rows > 500,
        "the remote partitions hold rows: {remote_rows}"
    );

    let mut app = session_with_keys(&db, READER, &["k", "bk"]);
    // Every remote scan carries the condition, with the candidates as parameters.
    let sql = "SELECT id FROM units WHERE dscsa.dscsa_decrypt(serial) = 'SN77'";
    let verbose = explain(&mut app, "VERBOSE, COSTS OFF", sql);
    let remote_sql: Vec<&str> = verbose
        .lines()
        .filter(|l| l.contains("Remote SQL:"))
        .collect();
    assert_eq!(remote_sql.len(), 2, "{verbose}");
    for line in &remote_sql {
        assert!(
            line.contains("WHERE ((serial_bidx = ANY (ARRAY[$1::bytea, $2::bytea"),
            "{verbose}"
        );
    }
    // At most one partition per candidate runs (two key versions loaded), local or remote.
    let analyzed = explain_analyze(&mut app, sql);
    let scans_run = analyzed
        .lines()
        .filter(|l| {
            l.contains("Scan on units_")
                && !l.contains("Bitmap Index Scan")
                && !l.contains("never executed")
        })
        .count();
    assert!((1..=2).contains(&scans_run), "{analyzed}");
    assert_eq!(
        rows(&mut app, sql),
        vec!["5000".to_string(), "77".to_string()]
    );

    // A remote partition queried directly, with an IN list: one array parameter.
    let on_shard: Vec<String> = rows(
        &mut su,
        "SELECT dscsa.dscsa_decrypt(serial) FROM units_2 ORDER BY id LIMIT 3",
    );
    let in_list = format!(
        "SELECT id FROM units_2 WHERE dscsa.dscsa_decrypt(serial) IN ('{}', 'SN-none')",
        on_shard.join("', '")
    );
    let direct = explain(&mut app, "VERBOSE, COSTS OFF", &in_list);
    assert!(
        direct.contains("WHERE ((serial_bidx = ANY ($1::bytea[])))"),
        "{direct}"
    );
    let found = rows(&mut app, &in_list);
    assert_eq!(found.len(), 3, "{found:?}");

    // A generic plan ships the same condition and finds rows under both key versions.
    app.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE by_serial(text) AS SELECT id FROM units WHERE dscsa.dscsa_decrypt(serial) = $1;",
    )
    .expect("prepare");
    let generic = explain(
        &mut app,
        "VERBOSE, COSTS OFF",
        "EXECUTE by_serial('SN1999')",
    );
    assert_eq!(
        generic.matches("WHERE ((serial_bidx = ANY (ARRAY[").count(),
        2,
        "{generic}"
    );
    for (serial, ids) in [("SN1999", vec!["1999"]), ("SN77", vec!["5000", "77"])] {
        assert_eq!(
            rows(&mut app, &format!("EXECUTE by_serial('{serial}')")),
            ids
        );
    }

    // With the rewrite off every remote row comes back to be decrypted here: same rows.
    app.batch_execute("SET dscsa.blind_index_rewrite = off")
        .expect("off");
    let unrewritten = explain(&mut app, "VERBOSE, COSTS OFF", sql);
    assert!(!unrewritten.contains("serial_bidx = ANY"), "{unrewritten}");
    assert_eq!(
        rows(&mut app, sql),
        vec!["5000".to_string(), "77".to_string()]
    );
    assert_eq!(rows(&mut app, &in_list), found);
}

/// The hook keeps the catalog objects it uses from one statement to the next; dropping
/// and re-creating the extension (new function OIDs) in the middle of a session, this
/// one's or another's, is noticed: the next lookup plans with the new objects, without
/// "cache lookup failed", and in between statements plan as if pg_dscsa were absent.
#[test]
fn the_hook_follows_the_extension_being_dropped_and_created_again() {
    let (db, mut su) = fresh_db("lookup_recreate");
    let setup = "SELECT dscsa.create_blind_index_key('bk'); SELECT dscsa.load_key('bk');
         CREATE TABLE lot (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO lot SELECT i, 'LOT-' || i FROM generate_series(1, 3000) i;
         CALL dscsa.protect_column('lot', 'name', kind => 'lot', mode => 'in_place', blind_index_key => 'bk');
         ANALYZE lot;";
    su.batch_execute(setup).expect("protected table");
    let sql = "SELECT id FROM lot WHERE dscsa.dscsa_decrypt(name) = 'LOT-42'";
    let mut other = session_with_keys(&db, "postgres", &["k", "bk"]);
    for c in [&mut su, &mut other] {
        assert!(uses_blind_index(&plan(c, sql)));
        assert_eq!(rows(c, sql), vec!["42".to_string()]);
    }
    su.batch_execute("DROP TABLE lot; DROP EXTENSION pg_dscsa CASCADE;")
        .expect("drop the extension");
    // Without the extension every statement still plans (nothing to add).
    for c in [&mut su, &mut other] {
        assert_eq!(
            rows(c, "SELECT count(*) FROM pg_class WHERE relname = 'lot'"),
            vec!["0".to_string()]
        );
    }
    su.batch_execute(
        "CREATE EXTENSION pg_dscsa;
         SELECT dscsa.create_key('k'); SELECT dscsa.load_key('k'); SET dscsa.key_name = 'k';",
    )
    .expect("create the extension again");
    su.batch_execute(setup).expect("protected table again");
    other
        .batch_execute(
            "SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k'), dscsa.load_key('bk');",
        )
        .expect("keys again");
    for c in [&mut su, &mut other] {
        assert!(uses_blind_index(&plan(c, sql)));
        assert_eq!(rows(c, sql), vec!["42".to_string()]);
    }
}

/// The hook runs for every statement of every role: one without any right on the dscsa
/// schema (the application's other users, PUBLIC) plans and runs its own queries as if
/// pg_dscsa were not there, including PL/pgSQL expressions planned in an error handler.
#[test]
fn roles_without_the_extensions_rights_plan_as_usual() {
    let (db, mut su) = inventory("lookup_nobody");
    su.batch_execute(
        "CREATE TABLE notice_board (id int, msg text); INSERT INTO notice_board VALUES (1, 'hello');
         GRANT SELECT ON notice_board TO PUBLIC;",
    )
    .expect("a table for everyone");
    let mut nobody = pg_dscsa_itest::connect(&db, pg_dscsa_itest::NOBODY);
    assert_eq!(
        count(
            &mut nobody,
            "SELECT count(*) FROM notice_board WHERE msg = 'hello'"
        ),
        1
    );
    nobody
        .batch_execute(
            "DO $$
             BEGIN
                 PERFORM 1 / 0;
             EXCEPTION WHEN division_by_zero THEN
                 RAISE NOTICE 'handled: %', SQLERRM;
             END $$;",
        )
        .expect("an error handler's expressions plan");
    // And pg_dscsa's own objects stay closed to it.
    assert_eq!(
        sqlstate(nobody.batch_execute("SELECT id FROM stock_lot_plain WHERE name = 'LOT-7'")),
        "42501"
    );
}

/// A prepared lookup keeps finding every row while another session rotates the
/// blind-index key: the session reloads the key (a new version), its cached plans are
/// redone, and rows indexed under either version are found, without an error.
#[test]
fn a_prepared_lookup_follows_a_blind_index_key_rotation() {
    let (db, mut su) = inventory("lookup_rotation");
    let mut app = session_with_keys(&db, READER, &["k", "bk"]);
    app.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE by_name(text) AS SELECT id FROM stock_lot_plain WHERE name = $1;",
    )
    .expect("prepare");
    assert_eq!(rows(&mut app, "EXECUTE by_name('LOT-5')").len(), 2);
    for round in 1..=2 {
        su.batch_execute(&format!(
            "SELECT dscsa.rotate_key('bk'); SELECT dscsa.load_key('bk');
             INSERT INTO stock_lot_plain (id, name, product_id) VALUES ({}, 'LOT-5', 1);",
            20_000 + round
        ))
        .expect("rotate and insert under the new version");
        assert_eq!(
            rows(&mut app, "EXECUTE by_name('LOT-5')").len(),
            2 + round,
            "after rotation {round}"
        );
        assert!(uses_blind_index(&plan(
            &mut app,
            "EXECUTE by_name('LOT-5')"
        )));
    }
}

/// A plan runs on after its session loaded another version of the blind-index key: a
/// scrollable cursor declared with one version loaded (one slot), then with two (two
/// slots), rewound after the key was rotated and the new version loaded in the same
/// transaction. The rewound scan's slots find more versions than the plan has slots and
/// refuse with 22023 rather than answer for some versions only (before the slots were
/// told their plan's count, the two-slot cursor silently returned one row of three);
/// declared again, the cursor is planned for every version and finds the rows of each.
#[test]
fn a_plan_made_for_fewer_key_versions_than_are_loaded_is_refused() {
    let (_db, mut c) = inventory("lookup_stale_slots");
    let declare = "BEGIN;
         DECLARE by_name SCROLL CURSOR FOR SELECT id FROM stock_lot_plain WHERE name = 'LOT-5';";
    for round in 1..=2 {
        c.batch_execute(declare).expect("cursor");
        let cursor_plan = plan(
            &mut c,
            "DECLARE plan_only SCROLL CURSOR FOR SELECT id FROM stock_lot_plain WHERE name = 'LOT-5'",
        );
        assert!(uses_blind_index(&cursor_plan), "{cursor_plan}");
        assert!(
            cursor_plan.contains(&format!("'lot'::text, {round}, {round})")),
            "{round} slot(s): {cursor_plan}"
        );
        assert_eq!(
            c.query("FETCH ALL FROM by_name", &[]).expect("fetch").len(),
            1 + round,
            "round {round}"
        );
        c.batch_execute(&format!(
            "SELECT dscsa.rotate_key('bk'); SELECT dscsa.load_key('bk');
             INSERT INTO stock_lot_plain (id, name, product_id) VALUES ({}, 'LOT-5', 1);",
            30_000 + round
        ))
        .expect("rotate, load and insert under the new version");
        refused_as_stale_plan(
            c.batch_execute("MOVE ABSOLUTE 0 IN by_name; FETCH ALL FROM by_name"),
            &format!("round {round}"),
        );
        c.batch_execute("ROLLBACK").expect("rollback");
        // The rotation went with the transaction; this time it stays.
        c.batch_execute(&format!(
            "SELECT dscsa.rotate_key('bk'); SELECT dscsa.load_key('bk');
             INSERT INTO stock_lot_plain (id, name, product_id) VALUES ({}, 'LOT-5', 1);",
            30_000 + round
        ))
        .expect("rotate, load and insert under the new version");
    }
    c.batch_execute(declare).expect("cursor again");
    assert_eq!(
        c.query("FETCH ALL FROM by_name", &[]).expect("fetch").len(),
        4,
        "every version's rows"
    );
    c.batch_execute("COMMIT").expect("commit");
}
