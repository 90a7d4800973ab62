//! The production KMS hooks (hooks/, issue 9) against real servers started by
//! scripts/test.sh (scripts/kms_providers.sh): a SoftHSM2 token (PKCS#11), moto (the AWS
//! KMS API) and an OpenBao dev server (transit). For each: round trips through
//! PostgreSQL, the binding of key id/name/version (a wrapped key copied into another
//! keyring row does not unwrap), KEK rotation to another KEK (after which the old one
//! can go), `--check`; outages (server frozen with SIGSTOP) opening the circuit breaker
//! and a probe closing it; AWS error paths moto cannot produce, against a stub of our
//! own; and that no PIN, token or credential shows in `ps`, pg_settings or errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pg_dscsa_itest::{
    connect, create_test_roles, empty_db, env, error_text, run_with_stdin, sqlstate,
    unwrap_request, Settings, READER, WRITER,
};
use postgres::Client;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn kms_dir() -> String {
    env("DSCSA_TEST_KMS_DIR")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", kms_dir()))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .to_string()
}

struct Provider {
    tag: &'static str,
    program: &'static str,
    config: &'static str,
    kek1: String,
    kek2: String,
}

impl Provider {
    fn command(&self) -> String {
        format!(
            "{}/{} {}/{}",
            env("DSCSA_TEST_PG_BIN"),
            self.program,
            kms_dir(),
            self.config
        )
    }
}

fn pkcs11() -> Provider {
    Provider {
        tag: "p11",
        program: "pg_dscsa_kms_pkcs11",
        config: "pkcs11.conf",
        kek1: "pg_dscsa-kek-1".into(),
        kek2: "pg_dscsa-kek-2".into(),
    }
}

fn aws() -> Provider {
    Provider {
        tag: "aws",
        program: "pg_dscsa_kms_aws",
        config: "aws.conf",
        kek1: "alias/pg-dscsa-kek-1".into(),
        kek2: "alias/pg-dscsa-kek-2".into(),
    }
}

fn transit() -> Provider {
    Provider {
        tag: "transit",
        program: "pg_dscsa_kms_transit",
        config: "transit.conf",
        kek1: "pg-dscsa-kek".into(),
        kek2: "pg-dscsa-kek-2".into(),
    }
}

/// A database whose KMS hook is `p`, with key `k` under `kek` granted to the test roles.
fn provider_db(p: &Provider, tag: &str, kek: &str) -> (String, Client) {
    let (db, mut su) = empty_db(tag);
    su.batch_execute("CREATE EXTENSION pg_dscsa")
        .expect("extension");
    create_test_roles(&mut su);
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET dscsa.kms_command = '{}'",
        p.command().replace('\'', "''")
    ))
    .expect("hook");
    let mut c = connect(&db, "postgres");
    c.execute("SELECT dscsa.create_key('k', $1)", &[&kek])
        .unwrap_or_else(|e| {
            panic!(
                "{}: create_key under {kek}: {}",
                p.tag,
                error_text(Err::<(), _>(e))
            )
        });
    c.batch_execute(
        "SELECT dscsa.grant_key('k', 'dscsa_writer', 'encrypt'), dscsa.grant_key('k', 'dscsa_reader', 'decrypt');
         SELECT dscsa.load_key('k'); SET dscsa.key_name = 'k';",
    )
    .expect("grants");
    (db, c)
}

/// Runs a hook program as postgres with `args`, `stdin`; returns (status, stdout, stderr).
fn run_hook(program: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    run_with_stdin(
        Command::new("sudo")
            .args(["-u", "postgres", "--"])
            .arg(format!("{}/{program}", env("DSCSA_TEST_PG_BIN")))
            .args(args),
        stdin,
    )
}

/// Round trips, context binding, KEK rotation and the check mode of one provider;
/// `destroy_old` removes the old KEK once nothing needs it.
fn exercise(p: &Provider, kek1: &str, destroy_old: impl FnOnce()) {
    let (db, mut c) = provider_db(p, &format!("prov_{}", p.tag), kek1);
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v dscsa.serial_encrypted);
         INSERT INTO t SELECT i, dscsa.dscsa_encrypt_serial('PROV-' || i) FROM generate_series(1, 100) i;
         GRANT SELECT ON t TO dscsa_reader;",
    )
    .expect("encrypt under the provider's KEK");
    let check = |c: &mut Client| {
        let bad: i64 = c
            .query_one(
                "SELECT count(*) FROM t WHERE dscsa.dscsa_decrypt(v) IS DISTINCT FROM 'PROV-' || id",
                &[],
            )
            .expect("decrypt")
            .get(0);
        assert_eq!(
            bad, 0,
            "{}: every value decrypts to what was encrypted",
            p.tag
        );
    };
    let mut r = connect(&db, READER);
    r.batch_execute("SELECT dscsa.load_key('k')")
        .expect("reader loads through the provider");
    check(&mut r);

    // KEK rotation: every entry moves to the second KEK; nothing needs the first after.
    c.batch_execute("SELECT dscsa.rotate_key('k')")
        .expect("a second version");
    let moved: i32 = c
        .query_one("SELECT dscsa.rotate_kek($1)", &[&p.kek2])
        .unwrap_or_else(|e| panic!("{}: rotate_kek: {}", p.tag, error_text(Err::<(), _>(e))))
        .get(0);
    assert_eq!(moved, 2, "{}", p.tag);
    let refs: Vec<String> = c
        .query("SELECT DISTINCT kek_ref FROM dscsa.keyring", &[])
        .expect("refs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(refs.len(), 1, "{}: {refs:?}", p.tag);
    destroy_old();
    c.batch_execute("SELECT dscsa.flush_key_cache(); SELECT dscsa.unload_all_keys(); SELECT dscsa.load_key('k');")
        .unwrap_or_else(|e| panic!("{}: load after the old KEK went: {}", p.tag, error_text(Err::<(), _>(e))));
    check(&mut c);

    // A wrapped key copied into another keyring row (with its check value, so that only
    // the KMS's binding of key id, name and version can stop it) does not unwrap.
    c.execute("SELECT dscsa.create_key('k2', $1)", &[&p.kek2])
        .expect("k2");
    c.batch_execute(
        "UPDATE dscsa.keyring SET wrapped_key = s.wrapped_key, key_check = s.key_check, kek_ref = s.kek_ref
           FROM (SELECT wrapped_key, key_check, kek_ref FROM dscsa.keyring WHERE key_name = 'k' AND version = 1) s
          WHERE key_name = 'k2';
         SELECT dscsa.flush_key_cache();",
    )
    .expect("copy a wrapped key");
    let result = c.query_one("SELECT dscsa.load_key('k2')", &[]);
    let text = error_text(result);
    assert!(text.contains("invalid_ciphertext"), "{}: {text}", p.tag);
    c.batch_execute("DELETE FROM dscsa.keyring WHERE key_name = 'k2'")
        .expect("drop the forged row");

    // --check: a canary through the provider, and the binding checked.
    let (status, out, err) = run_hook(
        p.program,
        &["--check", &format!("{}/{}", kms_dir(), p.config)],
        "",
    );
    assert_eq!(status, 0, "{}: {out} {err}", p.tag);
    assert!(out.starts_with("ok provider="), "{}: {out}", p.tag);
}

fn pkcs11_tool(args: &[&str]) {
    let status = Command::new("sudo")
        .args(["-u", "postgres", "--", "env"])
        .arg(format!("SOFTHSM2_CONF={}/softhsm/softhsm2.conf", kms_dir()))
        .args([
            "pkcs11-tool",
            "--module",
            "/usr/lib/softhsm/libsofthsm2.so",
            "--token-label",
            "pg_dscsa",
            "--login",
        ])
        .arg(format!("--pin={}", read("hsm.pin")))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pkcs11-tool");
    assert!(status.success(), "pkcs11-tool {args:?}");
}

#[test]
fn pkcs11_hsm_round_trips_binds_and_rotates() {
    let _one = exclusive();
    let p = pkcs11();
    // A KEK of this test's own, destroyed once everything moved off it.
    let old = format!("pg_dscsa-kek-old-{}", std::process::id());
    pkcs11_tool(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        &old,
        "--sensitive",
    ]);
    exercise(&p, &old, || {
        pkcs11_tool(&["--delete-object", "--type", "secrkey", "--label", &old])
    });
}

#[test]
fn aws_kms_round_trips_binds_and_rotates() {
    let _one = exclusive();
    let p = aws();
    let kek1 = p.kek1.clone();
    exercise(&p, &kek1, || {});
    // The keyring names the second key by its ARN.
    let (_, mut c) = provider_db(&p, "prov_aws_arn", &p.kek2);
    let kek_ref: String = c
        .query_one(
            "SELECT kek_ref FROM dscsa.keyring WHERE key_name = 'k'",
            &[],
        )
        .expect("ref")
        .get(0);
    assert_eq!(kek_ref, read("aws_kek2"));
}

fn bao(args: &[&str]) {
    let status = Command::new(format!("{}/bin/bao", env("DSCSA_TEST_KMS_VENV")))
        .env(
            "BAO_ADDR",
            format!("http://127.0.0.1:{}", env("DSCSA_TEST_BAO_PORT")),
        )
        .env("BAO_TOKEN", read("bao.root"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("bao");
    assert!(status.success(), "bao {args:?}");
}

#[test]
fn transit_round_trips_binds_and_rotates_through_key_versions() {
    let _one = exclusive();
    let p = transit();
    let key = format!("pg-dscsa-kek-old-{}", std::process::id());
    bao(&["write", "-f", &format!("transit/keys/{key}")]);
    exercise(&p, &key, || {
        // Transit keys refuse deletion until it is allowed explicitly.
        bao(&[
            "write",
            &format!("transit/keys/{key}/config"),
            "deletion_allowed=true",
        ]);
        bao(&["delete", &format!("transit/keys/{key}")])
    });
    // Within one transit key: after `rotate`, rotate_kek to the same key moves every
    // entry to the new version, and the old version can be refused for decryption.
    let rolling = format!("pg-dscsa-kek-roll-{}", std::process::id());
    bao(&["write", "-f", &format!("transit/keys/{rolling}")]);
    let (_, mut c) = provider_db(&p, "prov_transit_roll", &rolling);
    let v1: String = c
        .query_one(
            "SELECT kek_ref FROM dscsa.keyring WHERE key_name = 'k'",
            &[],
        )
        .expect("ref")
        .get(0);
    assert_eq!(v1, format!("{rolling}@v1"));
    let old_blob: Vec<u8> = c
        .query_one(
            "SELECT wrapped_key FROM dscsa.keyring WHERE key_name = 'k'",
            &[],
        )
        .expect("blob")
        .get(0);
    bao(&["write", "-f", &format!("transit/keys/{rolling}/rotate")]);
    c.execute("SELECT dscsa.rotate_kek($1, $2)", &[&rolling, &v1])
        .expect("rotate to v2");
    let v2: String = c
        .query_one(
            "SELECT kek_ref FROM dscsa.keyring WHERE key_name = 'k'",
            &[],
        )
        .expect("ref")
        .get(0);
    assert_eq!(v2, format!("{rolling}@v2"));
    bao(&[
        "write",
        &format!("transit/keys/{rolling}/config"),
        "min_decryption_version=2",
    ]);
    c.batch_execute("SELECT dscsa.flush_key_cache(); SELECT dscsa.unload_all_keys(); SELECT dscsa.load_key('k');")
        .expect("loads under v2");
    // The copy wrapped under v1 no longer unwraps.
    let key_id: i32 = c
        .query_one("SELECT key_id FROM dscsa.keyring WHERE key_name = 'k'", &[])
        .expect("id")
        .get(0);
    let request = unwrap_request(&v1, key_id, "k", 1, &old_blob);
    let (status, _, err) = run_hook(
        p.program,
        &[&format!("{}/{}", kms_dir(), p.config)],
        &request,
    );
    assert_eq!(status, 1, "{err}");
    assert!(
        err.starts_with("disabled:") || err.starts_with("invalid_ciphertext:"),
        "{err}"
    );
}

/// Freezes a provider's server (SIGSTOP) for the life of the guard.
struct Frozen(i32);

impl Frozen {
    fn server(pid_file: &str) -> Frozen {
        let pid: i32 = read(pid_file).parse().expect("pid");
        Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// (hook runs, breaker state) of the hooks run by `program` (summed over its commands:
/// one breaker per command line).
fn breaker_of(c: &mut Client, program: &str) -> (i64, String) {
    let row = c
        .query_one(
            "SELECT coalesce(sum(hook_runs), 0)::bigint,
                    coalesce(max(breaker) FILTER (WHERE breaker <> 'closed'), 'closed')
               FROM dscsa.kms_status WHERE provider = $1",
            &[&program],
        )
        .expect("kms_status");
    (row.get(0), row.get(1))
}

/// With the provider's server frozen: cached keys work, loads that need the KMS fail
/// within the hook's limit, then the breaker refuses at once; thawed, a probe closes it.
fn outage(p: &Provider, pid_file: &str) {
    let _settings = Settings::set(&[
        ("dscsa.kms_breaker_failures", "3"),
        ("dscsa.kms_breaker_cooldown", "3"),
    ]);
    let (db, mut c) = provider_db(p, &format!("out_{}", p.tag), &p.kek2);
    c.execute("SELECT dscsa.create_key('cold', $1)", &[&p.kek2])
        .expect("cold key");
    c.batch_execute("SELECT dscsa.grant_key('cold', 'dscsa_writer', 'encrypt')")
        .expect("grant");
    let mut w = connect(&db, WRITER);
    w.batch_execute("SELECT dscsa.load_key('k')")
        .expect("warm the cache");
    let frozen = Frozen::server(pid_file);
    let mut w = connect(&db, WRITER);
    w.batch_execute("SELECT dscsa.load_key('k'); SET dscsa.key_name = 'k';")
        .expect("cached key");
    let n: i64 = w
        .query_one(
            "SELECT count(dscsa.dscsa_encrypt('SN' || i)) FROM generate_series(1, 1000) i",
            &[],
        )
        .expect("1,000 encryptions with the KMS down")
        .get(0);
    assert_eq!(n, 1000);
    for i in 0..3 {
        let start = Instant::now();
        let text = error_text(w.query_one("SELECT dscsa.load_key('cold')", &[]));
        assert!(text.contains("unavailable"), "{}: load {i}: {text}", p.tag);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}: load {i} took {:?}",
            p.tag,
            start.elapsed()
        );
    }
    let (runs, state) = breaker_of(&mut c, p.program);
    assert_eq!(state, "open", "{}", p.tag);
    let start = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            sqlstate(w.query_one("SELECT dscsa.load_key('cold')", &[])),
            "SK001"
        );
    }
    println!("{}: 100 refusals in {:?}", p.tag, start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{}: {:?}",
        p.tag,
        start.elapsed()
    );
    assert_eq!(
        breaker_of(&mut c, p.program).0,
        runs,
        "{}: no hook ran while open",
        p.tag
    );
    drop(frozen);
    std::thread::sleep(Duration::from_millis(3200));
    w.batch_execute("SELECT dscsa.load_key('cold')")
        .expect("the probe succeeds");
    assert_eq!(breaker_of(&mut c, p.program).1, "closed", "{}", p.tag);
}

#[test]
fn an_aws_kms_outage_opens_the_breaker_and_a_probe_closes_it() {
    let _one = exclusive();
    outage(&aws(), "moto.pid");
}

#[test]
fn a_transit_outage_opens_the_breaker_and_a_probe_closes_it() {
    let _one = exclusive();
    outage(&transit(), "bao.pid");
}

/// A stub of the AWS KMS JSON API answering every request with the error its KeyId
/// names; counts requests per key.
fn aws_stub() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let body = String::from_utf8_lossy(&body).into_owned();
            let kind = ["disabled", "denied", "throttled"]
                .into_iter()
                .find(|k| body.contains(&format!("{k}-key")))
                .unwrap_or("denied");
            log.lock().expect("log").push(kind.to_string());
            let (ty, msg) = match kind {
                "disabled" => (
                    "DisabledException",
                    "arn:aws:kms:us-east-1:1:key/disabled-key is disabled.",
                ),
                "throttled" => ("ThrottlingException", "Rate exceeded"),
                _ => (
                    "AccessDeniedException",
                    "User is not authorized to perform: kms:Encrypt",
                ),
            };
            let payload = format!(r#"{{"__type":"{ty}","message":"{msg}"}}"#);
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: stub\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (port, seen)
}

#[test]
fn aws_error_paths_moto_cannot_show_get_distinct_classes() {
    let _one = exclusive();
    let (port, seen) = aws_stub();
    let dir = format!("{}/stub_{}", kms_dir(), std::process::id());
    std::fs::create_dir_all(&dir).expect("dir");
    let config = format!("{dir}/aws-stub.conf");
    std::fs::write(
        &config,
        format!(
            "region = us-east-1\nendpoint_url = http://127.0.0.1:{port}\ncredentials_file = {}/aws.credentials\ntimeout_ms = 2000\nmax_attempts = 3\n",
            kms_dir()
        ),
    )
    .expect("config");
    Command::new("chown")
        .args(["-R", "postgres:postgres", &dir])
        .status()
        .expect("chown");
    Command::new("chmod")
        .args(["600", &config])
        .status()
        .expect("chmod");
    let request = |kek: &str| {
        format!(
            "pg_dscsa-kms-protocol: 1\noperation: wrap\nkek: {kek}\nkey-id: 1\nkey-name: k\nkey-version: 1\ndata: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        )
    };
    for (kek, class) in [
        ("disabled-key", "disabled:"),
        ("denied-key", "denied:"),
        ("throttled-key", "throttled:"),
    ] {
        let (status, _, err) = run_hook("pg_dscsa_kms_aws", &[&config], &request(kek));
        assert_eq!(status, 1, "{kek}: {err}");
        assert!(err.starts_with(class), "{kek}: {err}");
    }
    let log = seen.lock().expect("log").clone();
    let throttled = log.iter().filter(|k| *k == "throttled").count();
    assert_eq!(
        throttled, 3,
        "throttling is retried, a bounded number of times: {log:?}"
    );
    assert_eq!(
        log.iter().filter(|k| *k == "disabled").count(),
        1,
        "a disabled key is not retried"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_pin_token_or_credential_shows_in_ps_settings_or_errors() {
    let _one = exclusive();
    let secrets = [
        read("hsm.pin"),
        read("transit.token"),
        read("aws.credentials")
            .lines()
            .find_map(|l| {
                l.strip_prefix("aws_secret_access_key = ")
                    .map(str::to_string)
            })
            .expect("secret"),
    ];
    let providers = [pkcs11(), aws(), transit()];
    let mut dbs = Vec::new();
    for p in &providers {
        dbs.push(provider_db(p, &format!("sec_{}", p.tag), &p.kek2).0);
    }
    // Sample the process table while every provider runs its hook, over and over.
    let done = Arc::new(AtomicUsize::new(0));
    let flag = Arc::clone(&done);
    let sampler = std::thread::spawn(move || {
        let mut text = String::new();
        while flag.load(Ordering::Relaxed) == 0 {
            let out = Command::new("ps")
                .args(["-eo", "args"])
                .output()
                .expect("ps");
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        text
    });
    for db in &dbs {
        let mut c = connect(db, "postgres");
        for _ in 0..10 {
            c.batch_execute("SELECT dscsa.flush_key_cache(); SELECT dscsa.unload_all_keys(); SELECT dscsa.load_key('k');")
                .expect("load");
        }
    }
    done.store(1, Ordering::Relaxed);
    let ps = sampler.join().expect("sampler");
    assert!(
        ps.contains("pg_dscsa_kms_"),
        "the sampler never saw a hook run"
    );
    let mut su = connect("postgres", "postgres");
    let settings: String = su
        .query_one(
            "SELECT string_agg(setting, ' ') FROM pg_catalog.pg_settings WHERE name LIKE 'dscsa.%'",
            &[],
        )
        .expect("settings")
        .get(0);
    let db_settings: String = su
        .query_one("SELECT coalesce(string_agg(array_to_string(setconfig, ' '), ' '), '') FROM pg_catalog.pg_db_role_setting", &[])
        .expect("db settings")
        .get(0);
    // A failure whose message would be the place to leak one: a wrong PIN.
    let dir = format!("{}/badpin_{}", kms_dir(), std::process::id());
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(format!("{dir}/pin"), "0000wrong\n").expect("pin");
    std::fs::write(
        format!("{dir}/p11.conf"),
        std::fs::read_to_string(format!("{}/pkcs11.conf", kms_dir()))
            .expect("conf")
            .replace(&format!("{}/hsm.pin", kms_dir()), &format!("{dir}/pin")),
    )
    .expect("conf");
    Command::new("chown")
        .args(["-R", "postgres:postgres", &dir])
        .status()
        .expect("chown");
    Command::new("chmod")
        .args(["-R", "go-rwx", &dir])
        .status()
        .expect("chmod");
    let (status, _, err) = run_hook(
        "pg_dscsa_kms_pkcs11",
        &["--check", &format!("{dir}/p11.conf")],
        "",
    );
    assert_ne!(status, 0);
    assert!(err.starts_with("denied:"), "{err}");
    for secret in &secrets {
        assert!(
            !ps.contains(secret.as_str()),
            "a secret appears in ps output"
        );
        assert!(
            !settings.contains(secret.as_str()) && !db_settings.contains(secret.as_str()),
            "a secret appears in pg_settings"
        );
        assert!(
            !err.contains(secret.as_str()),
            "a secret appears in an error"
        );
    }
    assert!(!err.contains("0000wrong"));
    let _ = std::fs::remove_dir_all(&dir);
}
