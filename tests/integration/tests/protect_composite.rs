//! Constraints and indexes that include a protected column (issue 10): an ERP-style
//! `UNIQUE (name, product_id, company_id)` and multi-column btree indexes carry over with
//! the blind-index column in the column's place, under their own names, in place and
//! online (built before the cutover, while the application keeps writing), and
//! `dscsa.unprotect_column` restores the originals. What cannot be carried (primary keys,
//! foreign keys, partial and expression indexes) is refused by the dry run with its reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pg_dscsa_itest::{connect, count, explain, fresh_db, session_with_keys, sqlstate, READER};
use postgres::Client;

const LOTS: i64 = 30_000;

/// Lots named per product and company, like an ERP's stock_lot, with their plaintext copy.
fn lots(tag: &str) -> (String, Client) {
    let (db, mut c) = fresh_db(tag);
    c.batch_execute(&format!(
        "SELECT dscsa.create_blind_index_key('bk');
         SELECT dscsa.grant_key('bk', 'dscsa_reader', 'blind_index'), dscsa.grant_key('bk', 'dscsa_writer', 'blind_index');
         SELECT dscsa.load_key('bk');
         CREATE TABLE stock_lot (id serial PRIMARY KEY, name text NOT NULL, product_id int NOT NULL,
                                 company_id int NOT NULL, ref text,
                                 CONSTRAINT stock_lot_name_uniq UNIQUE (name, product_id, company_id));
         CREATE INDEX stock_lot_company_name_idx ON stock_lot (company_id, name DESC) INCLUDE (ref);
         INSERT INTO stock_lot (name, product_id, company_id, ref)
         SELECT 'LOT-' || (i % 10000), i % 3, 1 + i % 2, 'r' || i FROM generate_series(0, {} - 1) i;
         ANALYZE stock_lot;",
        LOTS
    ))
    .expect("stock_lot");
    (db, c)
}

fn defs(c: &mut Client) -> Vec<String> {
    let mut out: Vec<String> = c
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'stock_lot'::regclass::oid
             UNION ALL
             SELECT conname::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = 'stock_lot'::regclass::oid AND contype = 'u'::\"char\"",
            &[],
        )
        .expect("definitions")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    out.sort();
    out
}

fn assert_carried(c: &mut Client) {
    let d = defs(c).join("\n");
    assert!(
        d.contains("stock_lot_name_uniq UNIQUE (name_bidx, product_id, company_id)"),
        "{d}"
    );
    assert!(
        d.contains("CREATE INDEX stock_lot_company_name_idx ON public.stock_lot USING btree (company_id, name_bidx DESC) INCLUDE (ref)"),
        "{d}"
    );
    assert!(
        !d.contains("_dscsa_new"),
        "a building index was left behind: {d}"
    );
}

/// The ERP's rule on encrypted data: the same lot name twice for one product and company
/// is refused, for another product it is fine; lookups by name use the carried index.
fn check_rules_hold(db: &str, c: &mut Client) {
    c.batch_execute("SELECT dscsa.create_view('stock_lot'); GRANT SELECT, INSERT ON stock_lot, stock_lot_plain TO dscsa_reader, dscsa_writer; GRANT USAGE ON SEQUENCE stock_lot_id_seq TO dscsa_writer;")
        .expect("view");
    let mut app = session_with_keys(db, "postgres", &["k", "bk"]);
    let dup = app.batch_execute(
        "INSERT INTO stock_lot_plain (name, product_id, company_id) VALUES ('LOT-7', 7 % 3, 1 + 7 % 2)",
    );
    let text = format!("{dup:?}");
    assert_eq!(sqlstate(dup), "23505", "duplicate (name, product, company)");
    assert!(text.contains("stock_lot_name_uniq"), "{text}");
    app.batch_execute(
        "INSERT INTO stock_lot_plain (name, product_id, company_id) VALUES ('LOT-7', 99, 1)",
    )
    .expect("same name, another product");
    let mut reader = session_with_keys(db, READER, &["k", "bk"]);
    let plan = explain(
        &mut reader,
        "COSTS OFF",
        "SELECT id FROM stock_lot_plain WHERE name = 'LOT-42' AND product_id = 0",
    );
    assert!(
        plan.contains("stock_lot_name_uniq")
            && pg_dscsa_itest::compares_blind_index(&plan, "name_bidx"),
        "{plan}"
    );
}

fn unprotect_restores_the_originals(c: &mut Client, before: &[String]) {
    c.batch_execute(
        "SELECT dscsa.drop_view('stock_lot');
         CALL dscsa.unprotect_column('stock_lot', 'name');",
    )
    .expect("unprotect");
    assert_eq!(
        defs(c),
        before,
        "the original constraint and index are back"
    );
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM stock_lot WHERE name = 'LOT-7' AND product_id = 99"
        ),
        1
    );
}

#[test]
fn composite_unique_and_indexes_carry_over_in_place_and_back() {
    let (db, mut c) = lots("composite_in_place");
    let before = defs(&mut c);
    let problems: Vec<String> = c
        .query(
            "SELECT * FROM dscsa.protect_column_problems('stock_lot', 'name')",
            &[],
        )
        .expect("dry run")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        problems.len(),
        2,
        "both need a blind-index key: {problems:?}"
    );
    assert!(
        problems.iter().all(|p| p.contains("pass blind_index_key")),
        "{problems:?}"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM dscsa.protect_column_problems('stock_lot', 'name', 'bk')"
        ),
        0
    );
    c.batch_execute("CALL dscsa.protect_column('stock_lot', 'name', kind => 'lot', mode => 'in_place', blind_index_key => 'bk')")
        .expect("protect in place");
    assert_carried(&mut c);
    check_rules_hold(&db, &mut c);
    unprotect_restores_the_originals(&mut c, &before);
}

#[test]
fn composite_unique_carries_over_online_while_the_application_writes() {
    let (db, mut c) = lots("composite_online");
    let before = defs(&mut c);
    let mut runner = session_with_keys(&db, "postgres", &["k", "bk"]);
    let run = std::thread::spawn(move || {
        runner.batch_execute(
            "CALL dscsa.protect_column('stock_lot', 'name', kind => 'lot', blind_index_key => 'bk', batch_size => 500)",
        )
    });
    // The application inserts new lots while the backfill runs (and stops before the
    // cutover, after which it would write through the view).
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (db, stop, written) = (db.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut w = connect(&db, "postgres");
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 2000 {
                i += 1;
                let name = format!("NEW-{i}");
                if w.execute(
                    "INSERT INTO stock_lot (name, product_id, company_id) VALUES ($1, 5, 5)",
                    &[&name],
                )
                .is_ok()
                {
                    written.lock().expect("lock").push(name);
                }
            }
        })
    };
    let mut watcher = connect(&db, "postgres");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let row = watcher
            .query_opt(
                "SELECT next_block >= backfill_end_block FROM dscsa.protected_columns WHERE column_name = 'name'",
                &[],
            )
            .expect("progress");
        if row
            .and_then(|r| r.get::<_, Option<bool>>(0))
            .unwrap_or(false)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    run.join().expect("runner").expect("online protection");
    let written = written.lock().expect("lock").clone();
    assert!(
        !written.is_empty(),
        "the application wrote nothing during the backfill"
    );
    assert_carried(&mut c);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM stock_lot"),
        LOTS + written.len() as i64,
        "no row lost or added"
    );
    c.batch_execute("SET dscsa.key_name = 'k'").expect("k");
    for name in written.iter().step_by(37) {
        assert_eq!(
            c.query_one(
                "SELECT count(*) FROM stock_lot WHERE dscsa.dscsa_decrypt(name) = $1 AND product_id = 5",
                &[name]
            )
            .expect("written row")
            .get::<_, i64>(0),
            1,
            "{name}"
        );
    }
    check_rules_hold(&db, &mut c);
    unprotect_restores_the_originals(&mut c, &before);
}

#[test]
fn what_cannot_be_carried_is_refused_with_its_reason() {
    let (_db, mut c) = fresh_db("composite_refused");
    c.batch_execute(
        "SELECT dscsa.create_blind_index_key('bk'); SELECT dscsa.load_key('bk');
         CREATE TABLE product (code text PRIMARY KEY, name text);
         CREATE TABLE item (id int PRIMARY KEY, code text REFERENCES product, lot text, note text);
         CREATE INDEX item_lot_partial ON item (lot) WHERE note IS NULL;
         CREATE INDEX item_lot_lower ON item (lower(lot));
         CREATE INDEX item_lot_hash ON item USING hash (lot);
         CREATE TABLE other (lot text, id int);
         CREATE TABLE by_lot (lot text UNIQUE);
         CREATE TABLE ref_lot (lot text REFERENCES by_lot (lot));",
    )
    .expect("schema");
    let problems = |c: &mut Client, tbl: &str, col: &str| -> String {
        c.query(
            "SELECT string_agg(p, E'\\n') FROM dscsa.protect_column_problems($1::text::regclass, $2::text::name, 'bk') p",
            &[&tbl, &col],
        )
        .expect("dry run")[0]
            .get::<_, Option<String>>(0)
            .unwrap_or_default()
    };
    let p = problems(&mut c, "item", "lot");
    assert!(p.contains("item_lot_partial is a partial index"), "{p}");
    assert!(p.contains("item_lot_lower is an expression index"), "{p}");
    assert!(p.contains("item_lot_hash is a hash index"), "{p}");
    let p = problems(&mut c, "product", "code");
    assert!(p.contains("is the primary key"), "{p}");
    let p = problems(&mut c, "item", "code");
    assert!(
        p.contains("a foreign key cannot compare encrypted values"),
        "{p}"
    );
    let p = problems(&mut c, "by_lot", "lot");
    assert!(p.contains("references the column"), "{p}");
    // And the procedure refuses with the same reasons, changing nothing.
    assert_eq!(
        sqlstate(c.batch_execute(
            "CALL dscsa.protect_column('item', 'lot', mode => 'in_place', blind_index_key => 'bk')"
        )),
        "55000"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'item'::regclass::oid"
        ),
        4
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns"),
        0
    );
}
