//! Backfill workers (docs/PROTECT.md, "Backfill workers"): background workers that help
//! an online `dscsa.protect_column` encrypt its table, on a real server. They run as the
//! calling session's user, leave no row behind when they fail, and stop with it.

use std::time::{Duration, Instant};

use pg_dscsa_itest::*;
use postgres::Client;

/// A table `t (id, serial)` of `rows` units whose serials are `SN` and ten digits of id,
/// and an empty `changed (id, serial)` for the serials a test changes.
fn serial_table(c: &mut Client, rows: i64) {
    c.batch_execute(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, serial text NOT NULL);
         INSERT INTO t SELECT i, 'SN' || lpad(i::text, 10, '0') FROM generate_series(1, {rows}) i;
         CREATE TABLE changed (id bigint PRIMARY KEY, serial text NOT NULL);"
    ))
    .expect("serial table");
}

/// A session of `user`, with key `k` loaded, that will call protect_column with
/// `workers` backfill workers, keeping its notices; `setup` runs first (SET ROLE).
fn leader(
    db: &str,
    user: &str,
    setup: &str,
    workers: i32,
) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let (mut leader, notices) = connect_keeping_notices(db, user);
    leader
        .batch_execute(&format!(
            "{setup} SET dscsa.key_name = 'k'; SET dscsa.backfill_workers = {workers};
             SELECT dscsa.load_key('k');"
        ))
        .expect("leader session");
    (leader, notices)
}

/// Rows of `t` whose protected serial does not decrypt to `SN` and ten digits of its id,
/// or to the serial the test changed it to (table `changed`).
fn wrong_serials(c: &mut Client) -> i64 {
    count(
        c,
        "SELECT count(*) FROM t
          WHERE dscsa.dscsa_decrypt(serial) IS DISTINCT FROM
                coalesce((SELECT s.serial FROM changed s WHERE s.id = t.id), 'SN' || lpad(id::text, 10, '0'))",
    )
}

#[test]
fn workers_backfill_as_the_callers_role_while_the_application_writes() {
    let (db, mut c) = fresh_db("bfw_role");
    c.batch_execute(
        // Roles of this test only (the itest_ roles are shared by every test).
        "DO $$ BEGIN
           CREATE ROLE bfw_owner NOLOGIN IN ROLE dscsa_admin, dscsa_writer;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         DO $$ BEGIN
           CREATE ROLE bfw_login LOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         GRANT bfw_owner TO bfw_login;
         -- (to see its own worker's backend_type: the session user is another role)
         GRANT pg_read_all_stats TO bfw_owner;",
    )
    .expect("owner role");
    serial_table(&mut c, 60_000);
    // Who ran each backfill statement: one row per UPDATE statement on t.
    c.batch_execute(
        "CREATE TABLE seen (backend_type text, current_user_name name, session_user_name name);
         CREATE FUNCTION note_who() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO public.seen SELECT backend_type, current_user, session_user FROM pg_stat_activity WHERE pid = pg_backend_pid();
           RETURN NULL;
         END $$;
         CREATE TRIGGER note_who AFTER UPDATE ON t FOR EACH STATEMENT EXECUTE FUNCTION note_who();
         ALTER TABLE t OWNER TO bfw_owner;
         ALTER TABLE changed OWNER TO bfw_owner;
         ALTER TABLE seen OWNER TO bfw_owner;",
    )
    .expect("trigger");
    let (mut leader, notices) = leader(&db, "bfw_login", "SET ROLE bfw_owner;", 2);
    // The application changes serials (through the plaintext column) until the cutover.
    let app_db = db.clone();
    let app = std::thread::spawn(move || {
        let mut app = session_with_keys(&app_db, "postgres", &["k"]);
        let protected = |app: &mut Client| {
            count(
                app,
                "SELECT count(*) FROM dscsa.protected_columns WHERE state = 'protected'",
            ) > 0
        };
        let mut changes = 0;
        for round in 1_i64.. {
            if protected(&mut app) {
                break;
            }
            let id = 1 + (round * 7919) % 60_000;
            let serial = format!("CHANGED{round:08}");
            let r = app.execute(
                "UPDATE t SET serial = $2::text WHERE id = $1 AND pg_typeof(serial)::oid = 'text'::regtype::oid",
                &[&id as &(dyn postgres::types::ToSql + Sync), &serial],
            );
            match r {
                Ok(1) => {
                    app.execute(
                        "INSERT INTO changed VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET serial = excluded.serial",
                        &[&id as &(dyn postgres::types::ToSql + Sync), &serial],
                    )
                    .expect("remember change");
                    changes += 1;
                }
                // The column was just cut over: it takes ciphertext now.
                Ok(_) | Err(_) if protected(&mut app) => break,
                Ok(n) => panic!("application update changed {n} rows"),
                Err(e) => panic!("application update: {e}"),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        changes
    });
    leader
        .batch_execute(
            "CALL dscsa.protect_column('t', 'serial', kind => 'serial', batch_size => 1000)",
        )
        .expect("protect online with workers");
    let changes = app.join().expect("application thread");
    assert!(changes > 0, "the application wrote during the backfill");
    assert_eq!(
        notices_with(&notices, "backfill workers help this session").len(),
        1,
        "notices: {:?}",
        notices.lock().expect("notices")
    );
    assert!(notices_with(&notices, "stopped early").is_empty());
    // The workers ran statements, as the caller's current role, logged in as the caller.
    let by_workers = count(
        &mut c,
        "SELECT count(*) FROM seen WHERE backend_type = 'pg_dscsa backfill'",
    );
    assert!(by_workers > 0, "the workers backfilled some ranges");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM seen WHERE backend_type = 'pg_dscsa backfill'
               AND (current_user_name <> 'bfw_owner' OR session_user_name <> 'bfw_login')"
        ),
        0
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM t"), 60_000);
    assert_eq!(wrong_serials(&mut c), 0);
    assert_eq!(backfill_workers_running(&mut c, &db), 0);
    // The audit trail has every encryption of the backfill, the workers' with the
    // session's user names under their own process ids.
    let backfilled = count(
        &mut c,
        "SELECT rows_done FROM dscsa.protected_columns WHERE relid::oid = 't'::regclass::oid",
    );
    // (The test cluster keeps its trail in database dscsa_audit: dscsa.audit_database.)
    let mut trail = connect("dscsa_audit", "postgres");
    let recorded = format!(
        "FROM dscsa.audit_log WHERE database = '{db}' AND record_type = 'access' AND operation = 'encrypt'
            AND session_user_name = 'bfw_login' AND current_user_name = 'bfw_owner'"
    );
    // Every encryption made is recorded, also one PostgreSQL made for a row version an
    // application update replaced meanwhile (the backfill's UPDATE then skips the row,
    // whose twin the sync trigger wrote): at most one per change, never fewer than the
    // rows backfilled.
    let recorded_count =
        wait_for_recorded(&mut trail, &recorded, backfilled, "backfill encryptions");
    assert!(
        recorded_count <= backfilled + changes,
        "{recorded_count} encryptions recorded for {backfilled} rows backfilled and {changes} changes"
    );
    assert!(
        recording_pids(&mut trail, &recorded) >= 2,
        "the session and at least one worker"
    );
}

#[test]
fn a_worker_that_fails_leaves_its_blocks_to_the_session() {
    let (db, mut c) = fresh_db("bfw_fail");
    serial_table(&mut c, 30_000);
    c.batch_execute(
        "CREATE FUNCTION refuse_workers() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()) = 'pg_dscsa backfill' THEN
             RAISE EXCEPTION 'this table takes no updates from background workers';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_workers BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION refuse_workers();",
    )
    .expect("trigger");
    let (mut leader, notices) = leader(&db, "postgres", "", 2);
    leader
        .batch_execute(
            "CALL dscsa.protect_column('t', 'serial', kind => 'serial', batch_size => 1000)",
        )
        .expect("the session finishes alone");
    let stopped = notices_with(&notices, "backfill workers stopped early");
    assert_eq!(
        stopped.len(),
        1,
        "notices: {:?}",
        notices.lock().expect("notices")
    );
    assert!(stopped[0].contains("2 of 2"), "{}", stopped[0]);
    assert_eq!(wrong_serials(&mut c), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM dscsa.protected_columns WHERE relid::oid = 't'::regclass::oid AND state = 'protected'"),
        1
    );
    assert_eq!(backfill_workers_running(&mut c, &db), 0);
}

#[test]
fn cancelling_the_session_stops_its_workers_and_a_new_call_finishes() {
    let (db, mut c) = fresh_db("bfw_cancel");
    serial_table(&mut c, 40_000);
    c.batch_execute(
        "CREATE FUNCTION slow_rows() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$;
         CREATE TRIGGER slow_rows BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION slow_rows();",
    )
    .expect("slow trigger");
    let (mut leader, _) = leader(&db, "postgres", "SET statement_timeout = '3s';", 2);
    let r = leader.batch_execute(
        "CALL dscsa.protect_column('t', 'serial', kind => 'serial', batch_size => 500)",
    );
    assert_eq!(sqlstate(r), "57014");
    let deadline = Instant::now() + Duration::from_secs(10);
    while backfill_workers_running(&mut c, &db) > 0 {
        assert!(
            Instant::now() < deadline,
            "backfill workers outlived their session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let row = c
        .query_one(
            "SELECT state, next_block, backfill_end_block FROM dscsa.protected_columns WHERE relid::oid = 't'::regclass::oid",
            &[],
        )
        .expect("registry");
    let (state, next, end): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(state, "backfilling");
    assert!(next < end, "interrupted half-way: {next} of {end}");
    // Every row below the resume point has its twin: the point never runs ahead.
    let twin: String = c
        .query_one(
            "SELECT twin_column FROM dscsa.protected_columns WHERE relid::oid = 't'::regclass::oid",
            &[],
        )
        .expect("twin")
        .get(0);
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM t WHERE {twin} IS NULL AND ctid < '({next},0)'::tid")
        ),
        0
    );
    leader
        .batch_execute("RESET statement_timeout; DROP TRIGGER slow_rows ON t")
        .expect("reset");
    leader
        .batch_execute(
            "CALL dscsa.protect_column('t', 'serial', kind => 'serial', batch_size => 500)",
        )
        .expect("resume");
    assert_eq!(wrong_serials(&mut c), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM t"), 40_000);
}

#[test]
fn without_workers_the_session_backfills_alone() {
    let (db, mut c) = fresh_db("bfw_none");
    serial_table(&mut c, 10_000);
    let (mut leader, notices) = leader(&db, "postgres", "", 0);
    leader
        .batch_execute(
            "CALL dscsa.protect_column('t', 'serial', kind => 'serial', batch_size => 500)",
        )
        .expect("protect alone");
    assert!(notices_with(&notices, "backfill workers").is_empty());
    assert_eq!(wrong_serials(&mut c), 0);
    assert_eq!(
        count(
            &mut c,
            "SELECT rows_done FROM dscsa.protected_columns WHERE relid::oid = 't'::regclass::oid"
        ),
        10_000
    );
}
