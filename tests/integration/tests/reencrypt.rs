//! dscsa.reencrypt: moves a column to the active key version in committed batches,
//! keeps every value, is idempotent, and stays correct under concurrent writes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pg_dscsa_itest::{connect, fresh_db, sqlstate, WRITER};

#[test]
fn reencrypt_moves_every_row_and_survives_concurrent_writes() {
    let (db, mut c) = fresh_db("reenc");
    c.batch_execute(
        "CREATE TABLE unit (id int PRIMARY KEY, plain text NOT NULL,
                            serial dscsa.serial_encrypted NOT NULL, note dscsa.encrypted);
         INSERT INTO unit SELECT i, 'SN' || i, dscsa_encrypt_serial('SN' || i, 'erp.unit.serial'),
                                 CASE WHEN i % 3 = 0 THEN NULL ELSE dscsa_encrypt('n' || i) END
           FROM generate_series(1, 3000) i;",
    )
    .expect("fill");
    let old_id: i64 = c
        .query_one(
            "SELECT DISTINCT dscsa.envelope_key_id(serial) FROM unit",
            &[],
        )
        .expect("old id")
        .get(0);
    let new_id: i32 = c
        .query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate")
        .get(0);
    c.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load");

    // Concurrent writer: updates, inserts and deletes while the procedure runs.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (db, stop, progress) = (db.clone(), stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut w = connect(&db, "postgres");
            w.batch_execute("SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k')")
                .expect("writer setup");
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 400 {
                i += 1;
                let id = 1 + (i * 7) % 3000;
                w.execute(
                    "UPDATE unit SET plain = 'U' || id, serial = dscsa_encrypt_serial('U' || id, 'erp.unit.serial') WHERE id = $1",
                    &[&id],
                )
                .expect("concurrent update");
                w.execute(
                    "INSERT INTO unit VALUES ($1::int, 'I' || $1::int, dscsa_encrypt_serial('I' || $1::int, 'erp.unit.serial'), NULL)",
                    &[&(10_000 + i)],
                )
                .expect("concurrent insert");
                w.execute("DELETE FROM unit WHERE id = $1", &[&(2 + (i * 13) % 3000)])
                    .expect("concurrent delete");
                progress.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Start re-encrypting only once the concurrent writer is under way.
    while progress.load(Ordering::SeqCst) < 20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // (What the test needs is overlap: writes committed while the call ran.)
    let before = progress.load(Ordering::SeqCst);
    c.batch_execute("CALL dscsa.reencrypt('unit', 'serial', 'erp.unit.serial', 50)")
        .expect("reencrypt serial");
    let after = progress.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread");
    assert!(
        after > before,
        "no write committed during the re-encryption ({before} before, {after} after)"
    );
    c.batch_execute("CALL dscsa.reencrypt('unit', 'serial', 'erp.unit.serial', 250)")
        .expect("catch up after the writer stopped");
    c.batch_execute("CALL dscsa.reencrypt('unit', 'note', NULL, 1000)")
        .expect("reencrypt note");

    let stale: i64 = c
        .query_one(
            "SELECT count(*) FROM unit WHERE dscsa.envelope_key_id(serial) <> $1
                OR (note IS NOT NULL AND dscsa.envelope_key_id(note) <> $1)",
            &[&i64::from(new_id)],
        )
        .expect("stale")
        .get(0);
    assert_eq!(stale, 0, "rows left on the old key version");
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM unit WHERE dscsa_decrypt(serial, 'erp.unit.serial') <> plain
                OR dscsa_decrypt(note) IS DISTINCT FROM CASE WHEN id % 3 = 0 OR id > 10000 THEN NULL ELSE 'n' || id END",
            &[],
        )
        .expect("compare")
        .get(0);
    assert_eq!(wrong, 0, "a value changed during re-encryption");
    // Idempotent: a second run has nothing to do; then the old version can be retired.
    c.batch_execute("CALL dscsa.reencrypt('unit', 'serial', 'erp.unit.serial')")
        .expect("second run");
    c.execute("SELECT dscsa.retire_key('k', 1)", &[])
        .expect("retire the old version");
    assert_ne!(old_id, i64::from(new_id));
}

#[test]
fn reencrypt_refuses_what_it_cannot_do() {
    let (db, mut c) = fresh_db("reenc_refuse");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, plain text, c dscsa.encrypted);
         INSERT INTO t VALUES (1, 'x', dscsa_encrypt('x'));
         GRANT SELECT, UPDATE ON t TO itest_writer;",
    )
    .expect("setup");
    assert_eq!(
        sqlstate(c.batch_execute("CALL dscsa.reencrypt('t', 'plain')")),
        "42809"
    );
    assert_eq!(
        sqlstate(c.batch_execute("CALL dscsa.reencrypt('t', 'c', NULL, 0)")),
        "22023"
    );
    c.query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate");
    // An encrypt-only role cannot re-encrypt: that needs decryption.
    let mut w = connect(&db, WRITER);
    w.batch_execute("SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k')")
        .expect("load");
    assert_eq!(
        sqlstate(w.batch_execute("CALL dscsa.reencrypt('t', 'c')")),
        "42501"
    );
}
