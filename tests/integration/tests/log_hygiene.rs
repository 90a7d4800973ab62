//! Run last (scripts/test.sh does): with log_statement = all and log_min_messages =
//! debug1 for the whole run, neither the server logs (primary and standby),
//! pg_stat_statements (tracking all statements, nested ones too), the audit trail nor its
//! export may contain any data key, audit key or KEK, in hex or base64, nor the KMS
//! providers' secrets (HSM PIN, transit token, AWS secret key). The data keys are recovered here, outside the server, by asking the
//! development hook (or, for the provider tests' databases, their own production hook)
//! to unwrap every keyring entry of every test database.

use std::process::Command;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use pg_dscsa_itest::{connect, env, fresh_db, hex, run_with_stdin, unwrap_request};

/// Unwraps a keyring entry through a hook command outside the server: the development
/// hook with one of the test's KEK files, or a production hook (program and config file,
/// as a database's `dscsa.kms_command` names them) run as postgres like the server runs
/// it (the hooks refuse configuration files they do not own).
fn unwrap_with(
    command: &mut Command,
    key_id: i32,
    name: &str,
    version: i32,
    kek: &str,
    wrapped: &[u8],
) -> Option<Vec<u8>> {
    let (status, out, _) = run_with_stdin(
        command,
        &unwrap_request(kek, key_id, name, version, wrapped),
    );
    if status != 0 {
        return None;
    }
    let data = out.lines().find_map(|l| l.strip_prefix("data: "))?;
    Some(STANDARD.decode(data).expect("base64"))
}

fn dev_hook(kek_file: &std::path::Path) -> Command {
    let mut c = Command::new(format!("{}/pg_dscsa_devkms", env("DSCSA_TEST_PG_BIN")));
    c.arg("--kek-file").arg(kek_file);
    c
}

fn as_postgres(command: &str) -> Command {
    let mut c = Command::new("sudo");
    c.args(["-u", "postgres", "--"])
        .args(command.split_whitespace());
    c
}

/// The database's own `dscsa.kms_command` (ALTER DATABASE ... SET), if any.
fn database_hook(su: &mut postgres::Client, db: &str) -> Option<String> {
    su.query_opt(
        "SELECT substr(s, length('dscsa.kms_command=') + 1)
           FROM pg_db_role_setting, unnest(setconfig) s
          WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = $1) AND setrole = 0
            AND s LIKE 'dscsa.kms\\_command=%'",
        &[&db],
    )
    .expect("database settings")
    .map(|r| r.get(0))
}

/// Every KEK file in the test's KMS directory (databases with their own hook have their
/// own), and every key in them and in the import files.
fn kms_files_and_secrets() -> (Vec<std::path::PathBuf>, Vec<Vec<u8>>) {
    let dir = std::path::Path::new(&env("DSCSA_TEST_KEK"))
        .parent()
        .expect("kms dir")
        .to_path_buf();
    let mut keks = Vec::new();
    let mut secrets = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("kms dir") {
        let path = entry.expect("entry").path();
        let name = path.display().to_string();
        if name.ends_with(".kek") {
            let bytes = std::fs::read(&path).expect("read KEK");
            secrets.extend(bytes.chunks(32).map(<[u8]>::to_vec));
            keks.push(path);
        } else if name.ends_with(".imports") {
            let text = std::fs::read_to_string(&path).expect("imports");
            for line in text.lines() {
                if let Some(key) = line.split_whitespace().nth(1) {
                    secrets.push(STANDARD.decode(key).expect("import key"));
                }
            }
        }
    }
    (keks, secrets)
}

fn spellings(bytes: &[u8]) -> Vec<String> {
    vec![
        hex(bytes),
        hex(bytes).to_uppercase(),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ]
}

/// Every spelling of every secret, found in one pass over a text: all spellings are runs
/// of base64/hex characters of a few fixed lengths (43 to 64), so only such runs in the
/// text are looked at, window by window, in a set. (A `contains` per spelling would read
/// hundreds of megabytes of trail and log once per spelling.)
struct Scanner {
    spellings: std::collections::HashSet<String>,
    lengths: Vec<usize>,
}

impl Scanner {
    fn new(secrets: &[Vec<u8>]) -> Scanner {
        let spellings: std::collections::HashSet<String> =
            secrets.iter().flat_map(|s| spellings(s)).collect();
        let mut lengths: Vec<usize> = spellings.iter().map(String::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        Scanner { spellings, lengths }
    }

    /// Whether `text` holds any spelling.
    fn finds_in(&self, text: &str) -> bool {
        let shortest = self.lengths.first().copied().unwrap_or(usize::MAX);
        let is_token = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
        text.split(|c: char| !is_token(c))
            .filter(|t| t.len() >= shortest)
            .any(|t| {
                self.lengths.iter().any(|&len| {
                    len <= t.len()
                        && (0..=t.len() - len).any(|i| self.spellings.contains(&t[i..i + len]))
                })
            })
    }
}

#[test]
fn the_scanner_finds_a_spelling_inside_other_text() {
    let key = vec![0x5au8; 32];
    let scanner = Scanner::new(std::slice::from_ref(&key));
    assert!(scanner.finds_in(&format!("x = '{}';", hex(&key))));
    assert!(scanner.finds_in(&format!("prefix{}suffix", STANDARD.encode(&key))));
    assert!(!scanner.finds_in("nothing to see, 0123456789abcdef0123456789abcdef0123456789abcdef"));
}

#[test]
fn no_key_bytes_in_the_server_log() {
    // Exercise the key paths once more in this test's own database, including failures.
    let (_db, mut c) = fresh_db("hygiene");
    c.query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate");
    c.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load");
    c.query_one("SELECT dscsa_decrypt(dscsa_encrypt('SN-hygiene'))", &[])
        .expect("round trip");
    let _ = c.query_one("SELECT dscsa_decrypt(dscsa_encrypt('x', 'a'), 'b')", &[]);

    let (kek_files, mut secrets) = kms_files_and_secrets();
    let mut su = connect("postgres", "postgres");
    let dbs: Vec<String> = su
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'it\\_%' OR datname = 'dscsa_audit'",
            &[],
        )
        .expect("databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for db in dbs {
        let hook = database_hook(&mut su, &db);
        let mut d = connect(&db, "postgres");
        let has_ext: bool = d
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_dscsa')",
                &[],
            )
            .expect("q")
            .get(0);
        if !has_ext {
            continue;
        }
        for row in d
            .query(
                "SELECT key_id, key_name, version, kek_ref, wrapped_key FROM dscsa.keyring WHERE status <> 'retired'",
                &[],
            )
            .expect("keyring")
        {
            let key_id: i32 = row.get(0);
            let dek = kek_files
                .iter()
                .find_map(|f| {
                    unwrap_with(
                        &mut dev_hook(f),
                        key_id,
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        row.get::<_, Vec<u8>>(4).as_slice(),
                    )
                })
                .or_else(|| {
                    // Databases of the provider tests: their keys are in the HSM/KMS.
                    hook.as_deref().and_then(|command| {
                        unwrap_with(
                            &mut as_postgres(command),
                            key_id,
                            row.get(1),
                            row.get(2),
                            row.get(3),
                            row.get::<_, Vec<u8>>(4).as_slice(),
                        )
                    })
                })
                .unwrap_or_else(|| panic!("neither a KEK file nor the database's hook unwraps key {key_id} of {db}"));
            assert_eq!(dek.len(), 32);
            secrets.push(dek);
        }
    }
    assert!(
        secrets.len() > 10,
        "expected keys from many test databases, got {}",
        secrets.len()
    );

    let mut statements = String::new();
    su.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .expect("pg_stat_statements is preloaded by scripts/test.sh");
    for row in su
        .query("SELECT query FROM pg_stat_statements", &[])
        .expect("statements")
    {
        statements.push_str(row.get::<_, &str>(0));
        statements.push('\n');
    }
    assert!(
        statements.contains("load_key"),
        "pg_stat_statements saw no key loads"
    );
    let scanner = Scanner::new(&secrets);
    assert!(
        !scanner.finds_in(&statements),
        "a key appears in pg_stat_statements"
    );

    // The audit trail, its export and what standbys logged must not hold keys either
    // (the audit key itself is among the secrets: dscsa_audit's keyring was read above).
    let mut trail = connect("dscsa_audit", "postgres");
    let mut audit_text = String::new();
    for row in trail
        .query("SELECT row_to_json(l)::text FROM dscsa.audit_log l", &[])
        .expect("trail")
    {
        audit_text.push_str(row.get::<_, &str>(0));
        audit_text.push('\n');
    }
    for row in trail
        .query("SELECT line FROM dscsa.audit_export() line", &[])
        .expect("export")
    {
        audit_text.push_str(row.get::<_, &str>(0));
        audit_text.push('\n');
    }
    assert!(
        audit_text.contains("\"decrypt\""),
        "the trail has no decryptions"
    );
    assert!(
        !scanner.finds_in(&audit_text),
        "a key appears in the audit trail or its export"
    );
    let standby_log = std::fs::read(format!("{}/server.log", env("DSCSA_TEST_STANDBY_DATADIR")))
        .expect("standby server log");
    let standby_log = String::from_utf8_lossy(&standby_log);
    assert!(
        !scanner.finds_in(&standby_log),
        "a key appears in the standby's server log"
    );

    let log = std::fs::read_to_string(format!("{}/server.log", env("DSCSA_TEST_DATADIR")))
        .expect("server log");
    assert!(
        log.contains("statement: "),
        "log_statement = all is not in effect"
    );
    assert!(
        log.contains("KMS hook unwrap succeeded"),
        "debug1 messages are not in the log"
    );
    assert!(!scanner.finds_in(&log), "a key appears in the server log");

    // Nor the KMS providers' secrets: the HSM PIN, the transit token, the AWS secret key.
    let kms_dir = env("DSCSA_TEST_KMS_DIR");
    let provider_secrets: Vec<String> = ["hsm.pin", "transit.token", "aws.credentials"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{kms_dir}/{f}")).expect("provider secret"))
        .map(|text| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("aws_secret_access_key = ")
                        .map(str::to_string)
                })
                .unwrap_or_else(|| text.trim().to_string())
        })
        .collect();
    for secret in &provider_secrets {
        assert!(
            secret.len() >= 16,
            "provider secrets are long enough to search for"
        );
        for (text, place) in [
            (&log, "server log"),
            (&standby_log.to_string(), "standby log"),
            (&statements, "pg_stat_statements"),
            (&audit_text, "audit trail"),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a KMS provider secret appears in the {place}"
            );
        }
    }
}
