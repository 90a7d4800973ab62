//! Backfill workers in `dscsa.reencrypt` and `dscsa.reindex_blind` (docs/KEYS.md,
//! "Re-encryption"): background workers walk block ranges of the table beside the calling
//! session, as the session's user with every key it loaded; nothing is lost or left
//! behind, the trail records their decryptions, and they stop with the session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_dscsa_itest::*;
use postgres::Client;

const ROWS: i64 = 40_000;

/// Table `t (id, plain, serial)` of `rows` units whose serial is `plain` encrypted under
/// key `key` with context `ctx`; and a login role `rew_login` that may re-encrypt it
/// (reader and writer, UPDATE on t, decrypt grants on `key` and `k`).
fn units_under(c: &mut Client, key: &str, rows: i64) {
    c.batch_execute(&format!(
        "DO $$ BEGIN
           CREATE ROLE rew_login LOGIN IN ROLE dscsa_reader, dscsa_writer;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         SET dscsa.key_name = '{key}';
         CREATE TABLE t (id bigint PRIMARY KEY, plain text NOT NULL, serial dscsa.serial_encrypted NOT NULL);
         INSERT INTO t SELECT i, 'SN' || lpad(i::text, 10, '0'), dscsa_encrypt_serial('SN' || lpad(i::text, 10, '0'), 'ctx')
           FROM generate_series(1, {rows}) i;
         SET dscsa.key_name = 'k';
         GRANT SELECT, UPDATE ON t TO rew_login;
         SELECT dscsa.grant_key('{key}', 'rew_login', 'decrypt');
         SELECT dscsa.grant_key('k', 'rew_login', 'decrypt');
         SELECT dscsa.grant_key('k', 'rew_login', 'encrypt');"
    ))
    .expect("units");
}

fn active_id(c: &mut Client, key: &str) -> i64 {
    count(
        c,
        &format!(
            "SELECT key_id::int8 FROM dscsa.keyring WHERE key_name = '{key}' AND status = 'active'"
        ),
    )
}

/// Rows whose serial is not under key version `id` or does not decrypt to `plain`.
fn wrong_rows(c: &mut Client, id: i64) -> i64 {
    count(
        c,
        &format!(
            "SELECT count(*) FROM t WHERE dscsa.envelope_key_id(serial) <> {id}
                OR dscsa.dscsa_decrypt(serial, 'ctx') IS DISTINCT FROM plain"
        ),
    )
}

#[test]
fn workers_reencrypt_from_another_key_as_the_caller_while_the_application_writes() {
    let (db, mut c) = fresh_db("rew_keys");
    c.batch_execute("SELECT dscsa.create_key('old'); SELECT dscsa.load_key('old')")
        .expect("old key");
    units_under(&mut c, "old", ROWS);
    let target = active_id(&mut c, "k");
    let (mut leader, notices) = connect_keeping_notices(&db, "rew_login");
    leader
        .batch_execute(
            "SET dscsa.key_name = 'k'; SET dscsa.backfill_workers = 2;
             SELECT dscsa.load_key('k'); SELECT dscsa.load_key('old');",
        )
        .expect("leader");
    // The application rewrites serials under the new key while the re-encryption runs.
    let done = Arc::new(AtomicBool::new(false));
    let app = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut app = session_with_keys(&db, "postgres", &["k"]);
            let mut changes = 0;
            for round in 1_i64..=2_000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let id = 1 + (round * 7919) % ROWS;
                let n = app
                    .execute(
                        "UPDATE t SET plain = 'CHANGED' || $1::int8, serial = dscsa_encrypt_serial('CHANGED' || $1::int8, 'ctx')
                          WHERE id = $1",
                        &[&id],
                    )
                    .expect("application update");
                assert_eq!(n, 1);
                changes += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            changes
        })
    };
    let r = leader.batch_execute("CALL dscsa.reencrypt('t', 'serial', 'ctx', 1000)");
    done.store(true, Ordering::SeqCst);
    let changes = app.join().expect("application thread");
    r.expect("reencrypt with workers");
    assert!(
        changes > 0,
        "the application wrote during the re-encryption"
    );
    assert_eq!(
        notices_with(&notices, "backfill workers help this session").len(),
        1,
        "notices: {:?}",
        notices.lock().expect("notices")
    );
    // Each worker loaded both keys (a value under `old` it could not open would have
    // failed it, and the session would have said so).
    assert!(
        notices_with(&notices, "stopped early").is_empty(),
        "notices: {:?}",
        notices.lock().expect("notices")
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM t"), ROWS);
    assert_eq!(wrong_rows(&mut c, target), 0);
    assert_eq!(backfill_workers_running(&mut c, &db), 0);
    // The trail has the decryptions of the workers too: the caller's user names, more
    // than one process id, at least one per row moved.
    let mut trail = connect("dscsa_audit", "postgres");
    let recorded = format!(
        "FROM dscsa.audit_log WHERE database = '{db}' AND record_type = 'access' AND operation = 'decrypt'
            AND session_user_name = 'rew_login' AND current_user_name = 'rew_login'"
    );
    wait_for_recorded(
        &mut trail,
        &recorded,
        ROWS - changes,
        "re-encryption decryptions",
    );
    assert!(
        recording_pids(&mut trail, &recorded) >= 2,
        "the session and at least one worker"
    );
}

#[test]
fn cancelling_a_reencryption_stops_its_workers_and_a_new_call_finishes() {
    let (db, mut c) = fresh_db("rew_cancel");
    units_under(&mut c, "k", ROWS);
    c.batch_execute(
        "SELECT dscsa.rotate_key('k');
         CREATE FUNCTION slow_rows() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$;
         CREATE TRIGGER slow_rows BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION slow_rows();",
    )
    .expect("rotate, slow trigger");
    let target = active_id(&mut c, "k");
    let (mut leader, notices) = connect_keeping_notices(&db, "rew_login");
    leader
        .batch_execute(
            "SET dscsa.key_name = 'k'; SET dscsa.backfill_workers = 2; SELECT dscsa.load_key('k');
             SET statement_timeout = '3s';",
        )
        .expect("leader");
    let r = leader.batch_execute("CALL dscsa.reencrypt('t', 'serial', 'ctx', 500)");
    assert_eq!(sqlstate(r), "57014");
    assert_eq!(
        notices_with(&notices, "backfill workers help this session").len(),
        1
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while backfill_workers_running(&mut c, &db) > 0 {
        assert!(
            Instant::now() < deadline,
            "backfill workers outlived their session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = count(
        &mut c,
        &format!("SELECT count(*) FROM t WHERE dscsa.envelope_key_id(serial) = {target}"),
    );
    assert!(moved < ROWS, "interrupted half-way: {moved} rows moved");
    // Nothing was lost or damaged by the interruption; a new call finishes the job.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM t WHERE dscsa.dscsa_decrypt(serial, 'ctx') IS DISTINCT FROM plain"
        ),
        0
    );
    leader
        .batch_execute("RESET statement_timeout")
        .expect("reset");
    c.batch_execute("DROP TRIGGER slow_rows ON t")
        .expect("drop trigger");
    leader
        .batch_execute("CALL dscsa.reencrypt('t', 'serial', 'ctx', 500)")
        .expect("resume");
    assert_eq!(wrong_rows(&mut c, target), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM t"), ROWS);
}

#[test]
fn workers_rewrite_blind_indexes_after_a_rotation() {
    let (db, mut c) = fresh_db("rew_bidx");
    c.batch_execute(
        &format!(
            "SELECT dscsa.create_blind_index_key('bk'); SELECT dscsa.load_key('bk');
             CREATE TABLE u (id bigint PRIMARY KEY, serial text NOT NULL);
             INSERT INTO u SELECT i, 'SN' || lpad(i::text, 10, '0') FROM generate_series(1, {ROWS}) i;
             CALL dscsa.protect_column('u', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');
             SELECT dscsa.rotate_key('bk');"
        ),
    )
    .expect("protected with a blind index, key rotated");
    let target = active_id(&mut c, "bk");
    let (mut leader, notices) = connect_keeping_notices(&db, "postgres");
    leader
        .batch_execute(
            "SET dscsa.key_name = 'k'; SET dscsa.backfill_workers = 2;
             SELECT dscsa.load_key('k'); SELECT dscsa.load_key('bk');",
        )
        .expect("leader");
    leader
        .batch_execute("CALL dscsa.reindex_blind('u', 'serial', 1000)")
        .expect("reindex_blind with workers");
    assert_eq!(
        notices_with(&notices, "backfill workers help this session").len(),
        1,
        "notices: {:?}",
        notices.lock().expect("notices")
    );
    assert!(notices_with(&notices, "stopped early").is_empty());
    let bidx: String = c
        .query_one(
            "SELECT blind_index_column FROM dscsa.protected_columns WHERE relid::oid = 'u'::regclass::oid",
            &[],
        )
        .expect("registry")
        .get(0);
    // Every blind index is under the new version, and equals the one computed afresh.
    assert_eq!(
        count(
            &mut c,
            &format!(
                "SELECT count(*) FROM u WHERE substr({bidx}, 1, 4) <> int4send({target}::int4)
                    OR {bidx} <> dscsa.blind_index(dscsa.dscsa_decrypt(serial), 'bk', 'serial')"
            )
        ),
        0
    );
    assert_eq!(backfill_workers_running(&mut c, &db), 0);
}
