//! Helpers for the client-side integration tests in `tests/`. They talk to a real
//! PostgreSQL 15 server with pg_dscsa installed, started by scripts/test.sh, which passes:
//!
//! - `DSCSA_TEST_PORT`     port of the test cluster on 127.0.0.1
//! - `DSCSA_TEST_DATADIR`  its data directory (the server log is `server.log` there)
//! - `DSCSA_TEST_KEK`      path of the development hook's KEK file
//! - `DSCSA_TEST_PG_BIN`   PostgreSQL's bin directory (pg_dump, pg_restore, pg_dscsa_devkms)
//! - `DSCSA_TEST_POOLER_PORT` port of pgbouncer (transaction pooling) in front of it
//! - `DSCSA_TEST_STANDBY_PORT` port of a streaming replica (hot standby) of the cluster,
//!   `DSCSA_TEST_STANDBY_DATADIR` its data directory; it forwards its audit records
//! - `DSCSA_TEST_TRAP`     "1" in the search_path pass: every session's search_path holds
//!   the booby-trapped schema of tests/trap/trap.sql before dscsa

use std::sync::atomic::{AtomicU32, Ordering};

use postgres::types::{FromSql, IsNull, ToSql, Type};
use postgres::{Client, NoTls};

pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

pub fn port() -> String {
    env("DSCSA_TEST_PORT")
}

/// Whether this is the search_path pass (scripts/test.sh runs the suite twice).
pub fn trap_mode() -> bool {
    std::env::var("DSCSA_TEST_TRAP").is_ok_and(|v| v == "1")
}

/// The search_path every test session starts with: the application's schema and dscsa,
/// with the booby-trapped schema between them in the search_path pass.
pub fn search_path() -> &'static str {
    if trap_mode() {
        "public, dscsa_trap, dscsa"
    } else {
        "public, dscsa"
    }
}

/// A session of `user` on `db`, with the test search_path.
pub fn connect(db: &str, user: &str) -> Client {
    connect_to(&port(), db, user)
}

/// A session of `user` on `db` of the hot standby (`DSCSA_TEST_STANDBY_PORT`).
pub fn connect_standby(db: &str, user: &str) -> Client {
    connect_to(&env("DSCSA_TEST_STANDBY_PORT"), db, user)
}

/// Connects; while the server is starting or in crash recovery (57P03: a test killed a
/// backend with SIGKILL, and the postmaster restarts every process) it retries for up
/// to a minute.
fn connect_to(port: &str, db: &str, user: &str) -> Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match try_connect_to(port, db, user) {
            Ok(c) => return c,
            Err(e)
                if e.code() == Some(&postgres::error::SqlState::CANNOT_CONNECT_NOW)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("connect {db} as {user}: {e:?}"),
        }
    }
}

/// A session of `user` on `db` that keeps every notice the server sends it, as
/// "message | hint" (the postgres crate otherwise only logs them).
pub fn connect_keeping_notices(
    db: &str,
    user: &str,
) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&notices);
    let mut config = postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port().parse().expect("the test ports are ports"))
        .dbname(db)
        .user(user)
        .notice_callback(move |n| {
            if let Ok(mut v) = kept.lock() {
                v.push(format!("{} | {}", n.message(), n.hint().unwrap_or("")));
            }
        });
    let client = config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect {db} as {user}: {e}"));
    (client, notices)
}

/// The notices a `connect_keeping_notices` session received that contain `text`.
pub fn notices_with(
    notices: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    text: &str,
) -> Vec<String> {
    notices
        .lock()
        .expect("notices")
        .iter()
        .filter(|n| n.contains(text))
        .cloned()
        .collect()
}

/// Waits (20 s at most) until the access records `records` of the audit trail (a `FROM
/// dscsa.audit_log WHERE ...` clause, run in `trail`) count at least `at_least`
/// operations; returns how many they count then. `what` names them in the failure.
pub fn wait_for_recorded(trail: &mut Client, records: &str, at_least: i64, what: &str) -> i64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let recorded = count(
            trail,
            &format!("SELECT coalesce(sum(count), 0)::int8 {records}"),
        );
        if recorded >= at_least {
            return recorded;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the trail has {recorded} of the at least {at_least} {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// How many process ids the access records `records` of the audit trail come from.
pub fn recording_pids(trail: &mut Client, records: &str) -> i64 {
    count(
        trail,
        &format!("SELECT count(DISTINCT backend_pid) {records}"),
    )
}

/// pg_dscsa's backfill workers (src/backfill) running in database `db`.
pub fn backfill_workers_running(c: &mut Client, db: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_dscsa backfill' AND datname = $1",
        &[&db],
    )
    .expect("workers")
    .get(0)
}

/// `connect_standby`, returning the error (the database may not be replayed yet).
pub fn try_connect_standby(db: &str, user: &str) -> Result<Client, postgres::Error> {
    try_connect_to(&env("DSCSA_TEST_STANDBY_PORT"), db, user)
}

fn try_connect_to(port: &str, db: &str, user: &str) -> Result<Client, postgres::Error> {
    let mut config = postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port.parse().expect("the test ports are ports"))
        .dbname(db)
        .user(user)
        .options(&format!(
            "-c search_path={}",
            search_path().replace(' ', "")
        ));
    config.connect(NoTls)
}

/// A client of pgbouncer (transaction pooling) in front of the test cluster: consecutive
/// transactions of this client may run on different server sessions, and one server
/// session serves many clients. Startup options are not passed through, so statements
/// name dscsa objects in full.
pub fn pooled(db: &str, user: &str) -> Client {
    let port = env("DSCSA_TEST_POOLER_PORT");
    let conn = format!("host=127.0.0.1 port={port} dbname={db} user={user}");
    Client::connect(&conn, NoTls)
        .unwrap_or_else(|e| panic!("connect {db} as {user} through pgbouncer: {e}"))
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The login roles the tests use, one per privilege level.
pub const ADMIN: &str = "itest_admin";
pub const WRITER: &str = "itest_writer";
pub const READER: &str = "itest_reader";
pub const NOBODY: &str = "itest_nobody";
/// Owns tables but holds no dscsa role.
pub const OWNER: &str = "itest_owner";
/// Holds CREATE on schema public, which is in every test session's search_path.
pub const PLANTER: &str = "itest_planter";

/// A new, empty database (no extension). Returns its name and a superuser connection.
pub fn empty_db(tag: &str) -> (String, Client) {
    let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
    let name = format!("it_{tag}_{}_{n}", std::process::id());
    let mut admin = connect("postgres", "postgres");
    // Separate calls: DROP/CREATE DATABASE cannot share an implicit transaction.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .expect("drop database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let c = connect(&name, "postgres");
    (name, c)
}

/// A fresh database with pg_dscsa installed, a key named `k` created and granted (encrypt
/// to dscsa_writer, decrypt to dscsa_reader and dscsa_admin), and the test login roles
/// present. Returns its name and a superuser connection with `k` loaded.
pub fn fresh_db(tag: &str) -> (String, Client) {
    let (name, mut c) = empty_db(tag);
    c.batch_execute("CREATE EXTENSION pg_dscsa")
        .expect("create extension");
    create_test_roles(&mut c);
    c.batch_execute(
        "SELECT dscsa.create_key('k');
         SELECT dscsa.grant_key('k', 'dscsa_writer', 'encrypt'), dscsa.grant_key('k', 'dscsa_reader', 'decrypt'),
                dscsa.grant_key('k', 'dscsa_admin', 'decrypt');
         SELECT dscsa.load_key('k');
         SET dscsa.key_name = 'k';",
    )
    .expect("set up database");
    (name, c)
}

/// The test login roles (created once per cluster; the dscsa group roles must exist,
/// so pg_dscsa is installed first), and CREATE on schema public for the planter.
pub fn create_test_roles(c: &mut Client) {
    c.batch_execute(
        "DO $$
         DECLARE
           r record;
         BEGIN
           FOR r IN SELECT * FROM (VALUES ('itest_admin', 'dscsa_admin'), ('itest_writer', 'dscsa_writer'),
                                          ('itest_reader', 'dscsa_reader'), ('itest_nobody', NULL),
                                          ('itest_owner', NULL), ('itest_planter', NULL)) v(name, member_of)
           LOOP
             BEGIN
               IF r.member_of IS NULL THEN
                 EXECUTE pg_catalog.format('CREATE ROLE %I LOGIN', r.name);
               ELSE
                 EXECUTE pg_catalog.format('CREATE ROLE %I LOGIN IN ROLE %I', r.name, r.member_of);
               END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN
               NULL; -- another test created it first
             END;
           END LOOP;
         END $$;
         GRANT CREATE ON SCHEMA public TO itest_planter;",
    )
    .expect("test roles");
}

/// The SQLSTATE of a failed statement (panics if it did not fail with a server error).
pub fn sqlstate<T: std::fmt::Debug>(result: Result<T, postgres::Error>) -> String {
    let err = result.expect_err("statement should have failed");
    err.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"))
        .code()
        .code()
        .to_string()
}

/// The full text of a server error: message, detail and hint.
pub fn error_text<T: std::fmt::Debug>(result: Result<T, postgres::Error>) -> String {
    let err = result.expect_err("statement should have failed");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    format!(
        "{} | {} | {}",
        db.message(),
        db.detail().unwrap_or(""),
        db.hint().unwrap_or("")
    )
}

/// A `dscsa.encrypted` value moved in the binary protocol (send/recv functions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope(pub Vec<u8>);

impl<'a> FromSql<'a> for Envelope {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Envelope(raw.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "encrypted" || ty.name().ends_with("_encrypted")
    }
}

impl ToSql for Envelope {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        <Envelope as FromSql>::accepts(ty)
    }

    postgres::types::to_sql_checked!();
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// products (50) -> lots (1,000) -> units (`units`), with the plaintext identifiers
/// saved in `saved_units` / `saved_lots` for comparison, and blind-index key `bk`.
pub fn erp_db(tag: &str, units: i64) -> (String, Client) {
    let (db, mut c) = fresh_db(tag);
    c.batch_execute(&format!(
        "SELECT dscsa.create_blind_index_key('bk');
         SELECT dscsa.grant_key('bk', 'dscsa_writer', 'blind_index'), dscsa.grant_key('bk', 'dscsa_reader', 'blind_index');
         SELECT dscsa.load_key('bk');
         CREATE TABLE product (id int PRIMARY KEY, gtin text NOT NULL UNIQUE, name text NOT NULL);
         CREATE TABLE lot (id int PRIMARY KEY, product_id int NOT NULL REFERENCES product,
                           lot_number varchar(20) NOT NULL, expiry date NOT NULL);
         CREATE INDEX lot_product_idx ON lot (product_id);
         CREATE TABLE unit (id bigint PRIMARY KEY, lot_id int NOT NULL REFERENCES lot,
                            serial text NOT NULL CONSTRAINT unit_serial_key UNIQUE,
                            status text NOT NULL DEFAULT 'commissioned', note text);
         CREATE INDEX unit_lot_idx ON unit (lot_id);
         INSERT INTO product SELECT p, lpad((30001012345 + p)::text, 14, '0'), 'Product ' || p
           FROM generate_series(1, 50) p;
         INSERT INTO lot SELECT l, 1 + l % 50, 'L' || to_char(l, 'FM00000'), date '2027-01-31' + (l % 400)
           FROM generate_series(1, 1000) l;
         INSERT INTO unit SELECT u, 1 + u % 1000, 'SN' || md5(u::text)::varchar(16),
                                 'commissioned', CASE WHEN u % 7 = 0 THEN NULL ELSE 'note ' || u END
           FROM generate_series(1, {units}) u;
         ANALYZE product, lot, unit;
         CREATE TABLE saved_units AS SELECT id, serial, note FROM unit;
         CREATE TABLE saved_lots AS SELECT id, lot_number, expiry FROM lot;"
    ))
    .expect("ERP schema");
    (db, c)
}

pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The plan of `sql` as `EXPLAIN (options) sql` prints it, one string.
pub fn explain(c: &mut Client, options: &str, sql: &str) -> String {
    c.query(&format!("EXPLAIN ({options}) {sql}"), &[])
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `result` is a lookup's refusal to run a plan made for fewer versions of
/// its blind-index key than are loaded now (22023, src/blind.rs `refuse_stale_plan`).
pub fn refused_as_stale_plan(result: Result<(), postgres::Error>, what: &str) {
    let err = result.expect_err(&format!("{what}: the plan should be refused"));
    let refused = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {err}"));
    assert_eq!(
        refused.code().code(),
        "22023",
        "{what}: {}",
        refused.message()
    );
    assert!(
        refused.message().contains("than this plan was made for"),
        "{what}: {}",
        refused.message()
    );
}

/// Whether `plan` (EXPLAIN text) compares blind-index column `column` with the candidates
/// the transparent lookup adds: `col = _blind_index_slot(...)` with one key version
/// loaded, `col = ANY (...)` with more or for an IN list. (The schema prints only when
/// dscsa is not on the search_path.)
pub fn compares_blind_index(plan: &str, column: &str) -> bool {
    [
        format!("{column} = ANY ("),
        format!("{column} = dscsa._blind_index_slot("),
        format!("{column} = _blind_index_slot("),
    ]
    .iter()
    .any(|spelling| plan.contains(spelling.as_str()))
}

/// A session of `user` with dscsa.key_name = 'k' set and `keys` loaded.
pub fn session_with_keys(db: &str, user: &str, keys: &[&str]) -> Client {
    let mut c = connect(db, user);
    c.batch_execute("SET dscsa.key_name = 'k';")
        .expect("session settings");
    for k in keys {
        c.execute("SELECT dscsa.load_key($1)", &[k])
            .unwrap_or_else(|e| panic!("load {k} as {user}: {e}"));
    }
    c
}

/// Server settings changed for a test (ALTER SYSTEM + reload), reset when the value is
/// dropped, also when the test fails.
pub struct Settings(Vec<&'static str>);

impl Settings {
    pub fn set(pairs: &[(&'static str, &str)]) -> Settings {
        let mut c = connect("postgres", "postgres");
        for (name, value) in pairs {
            c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
                .expect("alter system");
        }
        c.batch_execute("SELECT pg_reload_conf()").expect("reload");
        std::thread::sleep(std::time::Duration::from_millis(300));
        Settings(pairs.iter().map(|(n, _)| *n).collect())
    }
}

impl Drop for Settings {
    fn drop(&mut self) {
        let mut c = connect("postgres", "postgres");
        for name in &self.0 {
            let _ = c.batch_execute(&format!("ALTER SYSTEM RESET {name}"));
        }
        let _ = c.batch_execute("SELECT pg_reload_conf()");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Runs `command` with `stdin` written to it; returns (exit status, stdout, stderr).
pub fn run_with_stdin(command: &mut std::process::Command, stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run command");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A KMS protocol 1 unwrap request for one keyring entry (docs/KMS.md).
pub fn unwrap_request(kek: &str, key_id: i32, name: &str, version: i32, wrapped: &[u8]) -> String {
    use base64::Engine;
    format!(
        "pg_dscsa-kms-protocol: 1\noperation: unwrap\nkek: {kek}\nkey-id: {key_id}\nkey-name: {name}\nkey-version: {version}\ndata: {}\n",
        base64::engine::general_purpose::STANDARD.encode(wrapped)
    )
}
