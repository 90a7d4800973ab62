//! The cluster's key cache and the KMS circuit breaker (issue 9), with the development
//! hook: sessions and pooled transactions reuse cached keys instead of running the hook;
//! rotations and flushes evict; a hung KMS opens the breaker, which then refuses at once
//! while cached keys keep working, and closes after a successful probe; past the hard TTL
//! cached keys stop working with a clear error.
//!
//! The tests here change server settings (ALTER SYSTEM) and take turns; every setting
//! they change is reset when they end, even when they fail.

use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use pg_dscsa_itest::{connect, env, fresh_db, pooled, sqlstate, Settings, READER, WRITER};
use postgres::Client;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// (hook runs, breaker state) of the hooks whose program is `provider`: other tests of
/// the run use the same program with other arguments (one breaker per command), so the
/// runs are summed and the state is the least closed one.
fn hook(c: &mut Client, provider: &str) -> (i64, String) {
    let row = c
        .query_one(
            "SELECT coalesce(sum(hook_runs), 0)::bigint,
                    coalesce(max(breaker) FILTER (WHERE breaker <> 'closed'), 'closed')
               FROM dscsa.kms_status WHERE provider = $1",
            &[&provider],
        )
        .expect("kms_status");
    (row.get(0), row.get(1))
}

fn cache_hits(c: &mut Client) -> i64 {
    c.query_one("SELECT max(cache_hits) FROM dscsa.kms_status", &[])
        .expect("kms_status")
        .get::<_, Option<i64>>(0)
        .unwrap_or(0)
}

const DEV: &str = "pg_dscsa_devkms";

#[test]
fn sessions_share_cached_keys_and_changes_evict_them() {
    let _one = exclusive();
    let (db, mut su) = fresh_db("kc_share");
    su.batch_execute("SELECT dscsa.flush_key_cache()")
        .expect("flush");
    let (runs_before, _) = hook(&mut su, DEV);
    let hits_before = cache_hits(&mut su);
    for _ in 0..10 {
        let mut r = connect(&db, READER);
        r.batch_execute("SELECT dscsa.load_key('k')").expect("load");
    }
    let (runs, _) = hook(&mut su, DEV);
    assert_eq!(runs - runs_before, 1, "ten sessions, one unwrap");
    assert!(cache_hits(&mut su) - hits_before >= 9);
    let cached: Vec<(String, i32, i64)> = su
        .query("SELECT key_name, version, hits FROM dscsa.kms_cache", &[])
        .expect("kms_cache")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!((cached[0].0.as_str(), cached[0].1), ("k", 1));
    assert!(cached[0].2 >= 9);
    // The view has no column holding key material.
    let columns: Vec<String> = su
        .query(
            "SELECT attname::text FROM pg_catalog.pg_attribute
              WHERE attrelid OPERATOR(pg_catalog.=) 'dscsa.kms_cache'::regclass AND attnum > 0",
            &[],
        )
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !columns
            .iter()
            .any(|c| c.contains("key") && c != "key_name" && c != "key_id"),
        "{columns:?}"
    );

    // The cache saves hook runs, not authorization.
    let mut nobody = connect(&db, "itest_nobody");
    assert_eq!(
        sqlstate(nobody.query_one("SELECT dscsa.load_key('k')", &[])),
        "42501"
    );

    // A rotation evicts this database's keys: the next load asks the hook for both versions.
    su.batch_execute("SELECT dscsa.rotate_key('k')")
        .expect("rotate");
    assert_eq!(
        su.query_one("SELECT count(*) FROM dscsa.kms_cache", &[])
            .expect("q")
            .get::<_, i64>(0),
        0
    );
    let (before, _) = hook(&mut su, DEV);
    connect(&db, READER)
        .batch_execute("SELECT dscsa.load_key('k')")
        .expect("load");
    assert_eq!(
        hook(&mut su, DEV).0 - before,
        2,
        "both versions unwrapped once"
    );
    // unload_key evicts the key's cached copies; flush_key_cache the database's.
    su.batch_execute("SELECT dscsa.load_key('k'); SELECT dscsa.unload_key('k');")
        .expect("unload");
    assert_eq!(
        su.query_one(
            "SELECT count(*) FROM dscsa.kms_cache WHERE key_name = 'k'",
            &[]
        )
        .expect("q")
        .get::<_, i64>(0),
        0
    );
    connect(&db, READER)
        .batch_execute("SELECT dscsa.load_key('k')")
        .expect("load");
    let flushed: i64 = su
        .query_one("SELECT dscsa.flush_key_cache()", &[])
        .expect("flush")
        .get(0);
    assert_eq!(flushed, 2);
    // A KEK rotation evicts too.
    connect(&db, READER)
        .batch_execute("SELECT dscsa.load_key('k')")
        .expect("load");
    su.batch_execute("SELECT dscsa.rotate_kek('dev')")
        .expect("rotate kek");
    assert_eq!(
        su.query_one("SELECT count(*) FROM dscsa.kms_cache", &[])
            .expect("q")
            .get::<_, i64>(0),
        0
    );
    // Only a key administrator sees the cache and flushes it.
    let mut writer = connect(&db, WRITER);
    assert_eq!(
        sqlstate(writer.query("SELECT * FROM dscsa.kms_cache", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(writer.query("SELECT dscsa.flush_key_cache()", &[])),
        "42501"
    );
}

const CLIENTS: usize = 8;
const TRANSACTIONS: usize = 1000;

#[test]
fn eight_pooled_clients_run_8000_transactions_on_one_hook_run_per_key_version() {
    let _one = exclusive();
    let (db, mut su) = fresh_db("kc_pool");
    su.batch_execute(
        "CREATE TABLE sealed AS SELECT dscsa.dscsa_encrypt('x') AS v;
         GRANT SELECT ON sealed TO dscsa_reader;
         SELECT dscsa.flush_key_cache();",
    )
    .expect("set up");
    let (before, _) = hook(&mut su, DEV);
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let db = db.clone();
            thread::spawn(move || {
                let user = if i % 2 == 0 { WRITER } else { READER };
                let mut c = pooled(&db, user);
                // One round trip per transaction: a transaction-scoped load, a use of the
                // key, and what the session held when the transaction began.
                let work = if user == WRITER {
                    "SELECT dscsa.dscsa_encrypt('x')"
                } else {
                    "SELECT dscsa.dscsa_decrypt(v) FROM sealed"
                };
                for n in 0..TRANSACTIONS {
                    let rows = c
                        .simple_query(&format!(
                            "BEGIN; SELECT count(*) FROM dscsa.loaded_keys(); SET LOCAL dscsa.key_name = 'k';
                             SELECT dscsa.load_key('k', 'transaction'); {work}; COMMIT;"
                        ))
                        .unwrap_or_else(|e| panic!("{user} transaction {n}: {e:?}"));
                    let inherited = rows.iter().find_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    });
                    assert_eq!(inherited.as_deref(), Some("0"), "{user} transaction {n} began with keys loaded");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client");
    }
    let elapsed = started.elapsed();
    let (after, _) = hook(&mut su, DEV);
    println!(
        "{} pooled transactions in {:.1} s, {} hook runs",
        CLIENTS * TRANSACTIONS,
        elapsed.as_secs_f64(),
        after - before
    );
    assert!(
        after - before <= 1,
        "{} hook runs for one key version",
        after - before
    );
}

/// The development hook, made to hang (sleep) while `flag` does not exist: the same
/// command string throughout, so one circuit breaker sees the outage and the recovery.
fn flaky_hook(flag: &str) -> String {
    format!(
        "if [ -e {flag} ]; then exec {bin}/pg_dscsa_devkms --kek-file {kek}; else sleep 30; fi",
        bin = env("DSCSA_TEST_PG_BIN"),
        kek = env("DSCSA_TEST_KEK")
    )
}

#[test]
fn a_hung_kms_opens_the_breaker_cached_keys_go_on_and_a_probe_closes_it() {
    let _one = exclusive();
    let _settings = Settings::set(&[
        ("dscsa.kms_breaker_failures", "3"),
        ("dscsa.kms_breaker_cooldown", "3"),
    ]);
    let (db, mut su) = fresh_db("kc_breaker");
    let flag = format!(
        "{}/../kms_up_{}",
        env("DSCSA_TEST_DATADIR"),
        std::process::id()
    );
    std::fs::write(&flag, "").expect("flag");
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET dscsa.kms_command = '{}'; ALTER DATABASE {db} SET dscsa.kms_timeout = '1s';",
        flaky_hook(&flag).replace('\'', "''")
    ))
    .expect("database hook");
    let mut admin = connect(&db, "postgres");
    admin
        .batch_execute("SELECT dscsa.create_key('cold'); SELECT dscsa.grant_key('cold', 'dscsa_writer', 'encrypt');")
        .expect("a key never loaded");
    // 'k' is loaded (and cached) while the KMS is up.
    connect(&db, WRITER)
        .batch_execute("SELECT dscsa.load_key('k')")
        .expect("warm");

    // The KMS hangs.
    std::fs::remove_file(&flag).expect("outage");
    // (dscsa.kms_status names a hook by its command's first word.)
    let provider = "if";
    let mut w = connect(&db, WRITER);
    w.batch_execute("SELECT dscsa.load_key('k'); SET dscsa.key_name = 'k';")
        .expect("a cached key loads without the KMS");
    let n: i64 = w
        .query_one(
            "SELECT count(dscsa.dscsa_encrypt('SN' || i)) FROM generate_series(1, 1000) i",
            &[],
        )
        .expect("1,000 encryptions on the cached key")
        .get(0);
    assert_eq!(n, 1000);
    // The first loads that need the hook wait for the time limit, then the breaker opens.
    for i in 0..3 {
        let start = Instant::now();
        assert_eq!(
            sqlstate(w.query_one("SELECT dscsa.load_key('cold')", &[])),
            "38000",
            "load {i}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "load {i} took {:?}",
            start.elapsed()
        );
    }
    let (runs, state) = hook(&mut admin, provider);
    assert_eq!(state, "open");
    // The next 100 fail at once, with their own SQLSTATE, without running the hook.
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let t = Instant::now();
        let err = w
            .query_one("SELECT dscsa.load_key('cold')", &[])
            .expect_err("refused");
        slowest = slowest.max(t.elapsed());
        let db_err = err.as_db_error().expect("server error");
        assert_eq!(db_err.code().code(), "SK001");
        assert!(
            db_err.hint().unwrap_or("").contains("dscsa.kms_status"),
            "{db_err:?}"
        );
    }
    println!("100 refusals in {:?}, slowest {slowest:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "refusals took {:?}",
        start.elapsed()
    );
    assert_eq!(
        hook(&mut admin, provider).0,
        runs,
        "an open breaker runs no hook"
    );
    // Cached keys still work.
    w.batch_execute("SELECT dscsa.dscsa_encrypt('still works')")
        .expect("encrypt while open");

    // The KMS is back: after the cool-down one caller probes, and it closes the breaker.
    std::fs::write(&flag, "").expect("recovery");
    std::thread::sleep(Duration::from_millis(3200));
    w.batch_execute("SELECT dscsa.load_key('cold')")
        .expect("the probe succeeds");
    assert_eq!(hook(&mut admin, provider).1, "closed");
    w.batch_execute("SELECT dscsa.unload_key('cold'); SELECT dscsa.load_key('cold')")
        .expect("loads succeed again");
    let _ = std::fs::remove_file(&flag);
}

#[test]
fn past_the_hard_ttl_cached_keys_stop_working_with_a_clear_error() {
    let _one = exclusive();
    let _settings = Settings::set(&[
        ("dscsa.key_cache_ttl", "1"),
        ("dscsa.key_cache_max_ttl", "4"),
        ("dscsa.kms_breaker_failures", "100"),
    ]);
    let (db, mut su) = fresh_db("kc_ttl");
    su.batch_execute("SELECT dscsa.flush_key_cache()")
        .expect("flush");
    let flag = format!(
        "{}/../kms_up_ttl_{}",
        env("DSCSA_TEST_DATADIR"),
        std::process::id()
    );
    std::fs::write(&flag, "").expect("flag");
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET dscsa.kms_command = '{}'; ALTER DATABASE {db} SET dscsa.kms_timeout = '1s';",
        flaky_hook(&flag).replace('\'', "''")
    ))
    .expect("database hook");
    let mut w = connect(&db, WRITER);
    w.batch_execute("SELECT dscsa.load_key('k'); SET dscsa.key_name = 'k';")
        .expect("load");
    // Within the soft TTL nothing is asked of the KMS; past it, a refresh that fails
    // (KMS down) keeps the cached key until the hard TTL.
    std::fs::remove_file(&flag).expect("outage");
    w.batch_execute("SELECT dscsa.dscsa_encrypt('a')")
        .expect("fresh key");
    std::thread::sleep(Duration::from_millis(1500));
    connect(&db, WRITER)
        .batch_execute("SELECT dscsa.load_key('k'); SET dscsa.key_name = 'k'; SELECT dscsa.dscsa_encrypt('b');")
        .expect("past the soft TTL, the cached key serves while the KMS is down");
    std::thread::sleep(Duration::from_millis(3000));
    let err = w
        .query_one("SELECT dscsa.dscsa_encrypt('c')", &[])
        .expect_err("expired");
    let db_err = err.as_db_error().expect("server error");
    assert_eq!(db_err.code().code(), "SK002", "{db_err:?}");
    assert!(db_err.message().contains("expired"), "{}", db_err.message());
    let mut fresh = connect(&db, WRITER);
    assert_eq!(
        sqlstate(fresh.query_one("SELECT dscsa.load_key('k')", &[])),
        "38000"
    );
    // Back: the next statement unwraps it again.
    std::fs::write(&flag, "").expect("recovery");
    std::thread::sleep(Duration::from_millis(1100));
    w.batch_execute("SELECT dscsa.dscsa_encrypt('d')")
        .expect("refreshed after the KMS returned");
    let _ = std::fs::remove_file(&flag);
}

#[test]
fn sessions_missing_one_key_together_run_the_hook_once_even_when_it_hangs() {
    let _one = exclusive();
    // The breaker stays out of it: this is about sessions waiting for one another.
    let _settings = Settings::set(&[("dscsa.kms_breaker_failures", "50")]);
    let (db, mut su) = fresh_db("kc_herd");
    let flag = format!(
        "{}/../kms_up_herd_{}",
        env("DSCSA_TEST_DATADIR"),
        std::process::id()
    );
    std::fs::write(&flag, "").expect("flag");
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET dscsa.kms_command = '{}'; ALTER DATABASE {db} SET dscsa.kms_timeout = '1s';",
        flaky_hook(&flag).replace('\'', "''")
    ))
    .expect("database hook");
    let mut admin = connect(&db, "postgres");
    admin
        .batch_execute(
            "SELECT dscsa.create_key('cold'); SELECT dscsa.grant_key('cold', 'dscsa_writer', 'encrypt');
             SELECT dscsa.flush_key_cache();",
        )
        .expect("a key nobody loaded");
    std::fs::remove_file(&flag).expect("outage");
    let (before, _) = hook(&mut admin, "if");

    const SESSIONS: usize = 6;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(SESSIONS));
    let workers: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let (db, barrier) = (db.clone(), barrier.clone());
            thread::spawn(move || {
                let mut c = connect(&db, WRITER);
                barrier.wait();
                let start = Instant::now();
                let state = sqlstate(c.query_one("SELECT dscsa.load_key('cold')", &[]));
                (state, start.elapsed())
            })
        })
        .collect();
    let results: Vec<(String, Duration)> = workers
        .into_iter()
        .map(|w| w.join().expect("session"))
        .collect();
    let (after, _) = hook(&mut admin, "if");
    println!("{results:?}, {} hook runs", after - before);
    for (state, took) in &results {
        assert_eq!(state, "38000");
        // One hook time limit (1 s) and its margin, not one per session in turn.
        assert!(*took < Duration::from_secs(4), "a session waited {took:?}");
    }
    assert!(
        after - before <= 2,
        "{} hook runs for {SESSIONS} sessions missing one key",
        after - before
    );

    // Once the KMS is back, the key loads (the failure is not remembered).
    std::fs::write(&flag, "").expect("recovery");
    std::thread::sleep(Duration::from_millis(1100));
    connect(&db, WRITER)
        .batch_execute("SELECT dscsa.load_key('cold')")
        .expect("loads after the KMS returns");
    let _ = std::fs::remove_file(&flag);
}
