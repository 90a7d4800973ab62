//! KMS hook failure modes: every failure is a clear 38000 error, never a hang, never a
//! partial load; cancel and statement_timeout interrupt a slow hook and kill it. (The
//! circuit breaker and the key cache are tested in kms_cache.rs.)

use std::time::{Duration, Instant};

use pg_dscsa_itest::{connect, env, error_text, fresh_db, sqlstate};

fn real_hook() -> String {
    format!(
        "{}/pg_dscsa_devkms --kek-file {}",
        env("DSCSA_TEST_PG_BIN"),
        env("DSCSA_TEST_KEK")
    )
}

fn set_hook(c: &mut postgres::Client, command: &str) {
    c.execute(
        "SELECT set_config('dscsa.kms_command', $1, false)",
        &[&command],
    )
    .expect("superuser sets the hook");
}

/// Forgets the session's keys and the cluster's cached copies, so that the next load
/// runs the hook (these tests are about the hook; the cache would serve the key).
fn forget_keys(c: &mut postgres::Client) {
    c.batch_execute("SELECT dscsa.unload_all_keys(); SELECT dscsa.flush_key_cache();")
        .expect("unload and flush");
}

fn load_error(c: &mut postgres::Client) -> (String, String) {
    forget_keys(c);
    let state = sqlstate(c.query_one("SELECT dscsa.load_key('k')", &[]));
    let text = error_text(c.query_one("SELECT dscsa.load_key('k')", &[]));
    (state, text)
}

fn no_keys_loaded(c: &mut postgres::Client) -> bool {
    let n: i64 = c
        .query_one("SELECT count(*) FROM dscsa.loaded_keys()", &[])
        .expect("q")
        .get(0);
    n == 0
}

#[test]
fn failing_hooks_give_clear_errors() {
    let (_db, mut c) = fresh_db("hookfail");
    let cases: &[(&str, &str)] = &[
        ("exit 3", "hook exited with status 3"),
        ("echo 'KEK arn:example is disabled' >&2; exit 1", "KEK arn:example is disabled"),
        ("/nonexistent/kms-hook", "status 127"),
        ("echo garbage", "is not \"name: value\""),
        ("printf 'pg_dscsa-kms-protocol: 9\\nstatus: ok\\ndata: AAAA\\n'", "protocol version \"9\" is not supported"),
        ("printf 'pg_dscsa-kms-protocol: 1\\nstatus: ok\\ndata: AAAA\\n'", "unwrap answered 3 bytes"),
        ("head -c 100000 /dev/zero", "more than 65536 bytes"),
        ("kill -9 $$", "killed by signal 9"),
        // A hook that answers a well-formed but wrong key is caught by the key check value.
        (
            "cat >/dev/null; printf 'pg_dscsa-kms-protocol: 1\\nstatus: ok\\ndata: %s\\n' \"$(head -c 32 /dev/urandom | base64 -w0)\"",
            "does not match the keyring's key check value",
        ),
    ];
    for (hook, expect) in cases {
        set_hook(&mut c, hook);
        let (state, text) = load_error(&mut c);
        assert_eq!(state, "38000", "hook {hook:?}: {text}");
        assert!(text.contains(expect), "hook {hook:?}: {text}");
        assert!(no_keys_loaded(&mut c), "hook {hook:?} left a key loaded");
    }
    // Key material a careless hook prints to stderr is masked in the error.
    set_hook(
        &mut c,
        "echo 'failed for key q83v7rX2lZ0p9n8Y4w2A1B3C5D7E9F0G' >&2; exit 1",
    );
    let (_, text) = load_error(&mut c);
    assert!(
        !text.contains("q83v7rX2lZ0p9n8Y4w2A1B3C5D7E9F0G") && text.contains("[redacted]"),
        "{text}"
    );
    // And with the real hook again, everything works.
    set_hook(&mut c, &real_hook());
    let n: i32 = c
        .query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load")
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn a_load_is_all_or_nothing() {
    let (_db, mut c) = fresh_db("partial");
    c.query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate");
    // This hook unwraps version 1 but fails on version 2.
    let hook = format!(
        "in=$(cat); case \"$in\" in *'key-version: 2'*) echo 'v2 refused' >&2; exit 1;; esac; printf '%s\\n' \"$in\" | {}",
        real_hook()
    );
    set_hook(&mut c, &hook);
    let (state, text) = load_error(&mut c);
    assert_eq!(state, "38000");
    assert!(text.contains("v2 refused"), "{text}");
    assert!(
        no_keys_loaded(&mut c),
        "version 1 must not stay loaded after the load failed"
    );
}

#[test]
fn hung_hook_is_killed_at_the_timeout() {
    let (_db, mut c) = fresh_db("hang");
    set_hook(&mut c, "sleep 30.25");
    c.batch_execute("SET dscsa.kms_timeout = 700")
        .expect("timeout");
    let start = Instant::now();
    let (state, text) = load_error(&mut c);
    assert_eq!(state, "38000");
    assert!(text.contains("did not finish within 700 ms"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        !hook_running("sleep 30.25"),
        "the hung hook is still running"
    );
}

fn hook_running(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn statement_timeout_and_cancel_interrupt_a_slow_hook() {
    let (db, mut c) = fresh_db("cancel");
    forget_keys(&mut c);
    set_hook(&mut c, "sleep 40.5");
    c.batch_execute("SET dscsa.kms_timeout = 600000; SET statement_timeout = 500")
        .expect("set");
    let start = Instant::now();
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.load_key('k')", &[])),
        "57014"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !hook_running("sleep 40.5"),
        "hook survived statement_timeout"
    );

    c.batch_execute("SET statement_timeout = 0").expect("set");
    set_hook(&mut c, "sleep 41.5");
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let mut other = connect(&db, "postgres");
        other
            .query_one("SELECT pg_cancel_backend($1)", &[&pid])
            .expect("cancel");
    });
    let start = Instant::now();
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.load_key('k')", &[])),
        "57014"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    canceller.join().expect("canceller");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!hook_running("sleep 41.5"), "hook survived cancel");
    assert!(no_keys_loaded(&mut c));
    // The backend is still healthy.
    set_hook(&mut c, &real_hook());
    c.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load after cancel");
}

#[test]
fn hook_that_cannot_unwrap_what_it_wrapped_is_refused_at_create() {
    let (_db, mut c) = fresh_db("create");
    // Wraps fine, but every unwrap fails: creating a key must fail before any data is
    // encrypted under a key that could never be recovered.
    let hook = format!(
        "in=$(cat); case \"$in\" in *'operation: unwrap'*) echo 'unwrap disabled' >&2; exit 1;; esac; printf '%s\\n' \"$in\" | {}",
        real_hook()
    );
    set_hook(&mut c, &hook);
    assert_eq!(
        sqlstate(c.query_one("SELECT dscsa.create_key('doomed')", &[])),
        "38000"
    );
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM dscsa.keyring WHERE key_name = 'doomed'",
            &[],
        )
        .expect("q")
        .get(0);
    assert_eq!(n, 0);
}
