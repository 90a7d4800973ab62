//! Run last (scripts/test.sh does): with log_statement = all and log_min_messages =
//! debug1 for the whole run, neither the server log nor pg_stat_statements (tracking all
//! statements, nested ones too) may contain any data key or the KEK, in hex or base64. The data keys are recovered here, outside the server, by asking the
//! development hook to unwrap every keyring entry of every test database.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use pg_dscsa_itest::{connect, env, fresh_db, hex};

fn unwrap_with_dev_hook(
    kek_file: &std::path::Path,
    key_id: i32,
    name: &str,
    version: i32,
    kek: &str,
    wrapped: &[u8],
) -> Option<Vec<u8>> {
    let request = format!(
        "pg_dscsa-kms-protocol: 1\noperation: unwrap\nkek: {kek}\nkey-id: {key_id}\nkey-name: {name}\nkey-version: {version}\ndata: {}\n",
        STANDARD.encode(wrapped)
    );
    let mut child = Command::new(format!("{}/pg_dscsa_devkms", env("DSCSA_TEST_PG_BIN")))
        .arg("--kek-file")
        .arg(kek_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run dev hook");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).expect("utf8");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    Some(STANDARD.decode(data).expect("base64"))
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
            "SELECT datname FROM pg_database WHERE datname LIKE 'it\\_%'",
            &[],
        )
        .expect("databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for db in dbs {
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
                    unwrap_with_dev_hook(
                        f,
                        key_id,
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        row.get::<_, Vec<u8>>(4).as_slice(),
                    )
                })
                .unwrap_or_else(|| panic!("no KEK file unwraps key {key_id} of {db}"));
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
    for secret in &secrets {
        for spelling in spellings(secret) {
            assert!(
                !statements.contains(&spelling),
                "a key appears in pg_stat_statements"
            );
        }
    }

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
    for secret in &secrets {
        for spelling in spellings(secret) {
            assert!(!log.contains(&spelling), "a key appears in the server log");
        }
    }
}
