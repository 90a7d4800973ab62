//! COPY (text and binary) and pg_dump/pg_restore move envelopes byte for byte: nothing
//! is re-encrypted, and restored data decrypts with the restored keyring.

use std::io::{Read, Write};
use std::process::Command;

use pg_dscsa_itest::{connect, env, fresh_db, port};

fn fill(c: &mut postgres::Client) {
    c.batch_execute(
        "CREATE TABLE unit (
             id int PRIMARY KEY,
             gtin dscsa.gtin_encrypted,
             serial dscsa.serial_encrypted NOT NULL,
             lot dscsa.lot_encrypted,
             expiry dscsa.expiry_encrypted,
             note dscsa.encrypted);
         INSERT INTO unit
         SELECT i, dscsa_encrypt_gtin('00300010123455'),
                dscsa_encrypt_serial('SN' || lpad(i::text, 18, '0'), 'erp.unit.serial'),
                dscsa_encrypt_lot('LOT' || (i % 7)), dscsa_encrypt_expiry('260331'),
                CASE WHEN i % 5 = 0 THEN NULL ELSE dscsa_encrypt('note ✓ ' || i) END
           FROM generate_series(1, 500) i;",
    )
    .expect("fill");
}

/// (id, armored serial, armored note) for every row, ordered by id.
fn snapshot(c: &mut postgres::Client, table: &str) -> Vec<(i32, String, Option<String>)> {
    c.query(
        &format!("SELECT id, dscsa.armor(serial), dscsa.armor(note) FROM {table} ORDER BY id"),
        &[],
    )
    .expect("snapshot")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn all_decrypt(c: &mut postgres::Client, table: &str) {
    let bad: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {table}
                  WHERE id < 1000
                    AND (dscsa_decrypt(serial, 'erp.unit.serial') <> 'SN' || lpad(id::text, 18, '0')
                         OR dscsa_decrypt(gtin) <> '00300010123455'
                         OR dscsa_decrypt(note) IS DISTINCT FROM CASE WHEN id % 5 = 0 THEN NULL ELSE 'note ✓ ' || id END)"
            ),
            &[],
        )
        .expect("decrypt all")
        .get(0);
    assert_eq!(bad, 0);
}

#[test]
fn copy_text_and_binary_round_trip_unchanged() {
    let (_db, mut c) = fresh_db("copy");
    fill(&mut c);
    for format in ["text", "csv", "binary"] {
        let target = format!("unit_{format}");
        c.batch_execute(&format!("CREATE TABLE {target} (LIKE unit)"))
            .expect("create");
        let mut data = Vec::new();
        c.copy_out(&format!("COPY unit TO STDOUT (FORMAT {format})"))
            .expect("copy out")
            .read_to_end(&mut data)
            .expect("read");
        if format != "binary" {
            let text = String::from_utf8(data.clone()).expect("utf8");
            assert!(
                text.contains("dscsa:") && !text.contains("SN000"),
                "COPY shows only ciphertext"
            );
        }
        let mut w = c
            .copy_in(&format!("COPY {target} FROM STDIN (FORMAT {format})"))
            .expect("copy in");
        w.write_all(&data).expect("write");
        w.finish().expect("finish");
        assert_eq!(
            snapshot(&mut c, "unit"),
            snapshot(&mut c, &target),
            "{format}"
        );
        all_decrypt(&mut c, &target);
    }
    // COPY FROM refuses plaintext in an encrypted column, and loads nothing.
    c.batch_execute("CREATE TABLE bad (LIKE unit)")
        .expect("create");
    let mut w = c
        .copy_in("COPY bad (id, serial) FROM STDIN")
        .expect("copy in");
    w.write_all(b"1\tSN-PLAINTEXT\n").expect("write");
    let err = w.finish().expect_err("plaintext must be rejected");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("22P02"));
    let n: i64 = c
        .query_one("SELECT count(*) FROM bad", &[])
        .expect("q")
        .get(0);
    assert_eq!(n, 0);
}

/// A PostgreSQL client program (pg_dump, pg_restore) pointed at the test cluster.
fn pg_tool(name: &str) -> Command {
    let mut cmd = Command::new(format!("{}/{name}", env("DSCSA_TEST_PG_BIN")));
    cmd.args(["-h", "127.0.0.1", "-p", &port(), "-U", "postgres"]);
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pg_dump_and_pg_restore_keep_envelopes_and_keys() {
    let (db, mut c) = fresh_db("dump");
    fill(&mut c);
    c.query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate");
    c.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load");
    c.batch_execute(
        "INSERT INTO unit (id, serial) VALUES (1000, dscsa_encrypt_serial('SN-after-rotation'))",
    )
    .expect("insert after rotation");
    let dir = std::env::temp_dir().join(format!("dscsa-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let dump = dir.join("db.dump");
    run(pg_tool("pg_dump").args(["-Fc", "-d", &db, "-f"]).arg(&dump));
    let restored = format!("{db}_restored");
    let mut su = connect("postgres", "postgres");
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {restored}"))
        .expect("drop");
    // From template0: a dump holds everything the source database had (in the search_path
    // pass also the trap schema that template1 gives every new database).
    su.batch_execute(&format!("CREATE DATABASE {restored} TEMPLATE template0"))
        .expect("create");
    run(pg_tool("pg_restore")
        .args(["--exit-on-error", "-d", &restored])
        .arg(&dump));

    let mut r = connect(&restored, "postgres");
    assert_eq!(
        snapshot(&mut c, "unit"),
        snapshot(&mut r, "unit"),
        "restore changed ciphertext"
    );
    let keyring = |c: &mut postgres::Client| -> Vec<(i32, String, i32, String, Vec<u8>)> {
        c.query("SELECT key_id, key_name, version, status, wrapped_key FROM dscsa.keyring ORDER BY key_id", &[])
            .expect("keyring")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
            .collect()
    };
    assert_eq!(keyring(&mut c), keyring(&mut r));
    assert_eq!(keyring(&mut r).len(), 2);
    let n: i32 = r
        .query_one("SELECT dscsa.load_key('k')", &[])
        .expect("load restored key")
        .get(0);
    assert_eq!(n, 2);
    all_decrypt(&mut r, "unit");
    let v: String = r
        .query_one(
            "SELECT dscsa_decrypt(serial) FROM unit WHERE id = 1000",
            &[],
        )
        .expect("decrypt")
        .get(0);
    assert_eq!(v, "SN-after-rotation");
    // New keys in the restored database never reuse a restored key id.
    let new_id: i32 = r
        .query_one("SELECT dscsa.create_key('fresh')", &[])
        .expect("create")
        .get(0);
    assert!(new_id > 2, "key id {new_id} reused");
    // A plain-format dump holds only ciphertext and wrapped keys.
    let plain = dir.join("db.sql");
    run(pg_tool("pg_dump").args(["-d", &db, "-f"]).arg(&plain));
    let text = std::fs::read_to_string(&plain).expect("read dump");
    assert!(
        text.contains("dscsa:") && !text.contains("SN-after-rotation") && !text.contains("note ✓")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
