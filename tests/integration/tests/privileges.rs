//! Who may do what: PUBLIC gets nothing, writers encrypt but cannot decrypt, readers
//! decrypt, admins manage keys, nobody but admins reads the keyring, and only superusers
//! choose the KMS hook.

use pg_dscsa_itest::{connect, fresh_db, sqlstate, ADMIN, NOBODY, READER, WRITER};

fn session(db: &str, user: &str) -> postgres::Client {
    let mut c = connect(db, user);
    c.batch_execute("SET dscsa.key_name = 'k'").expect("set");
    c
}

#[test]
fn writer_encrypts_but_cannot_decrypt() {
    let (db, mut su) = fresh_db("writer");
    su.batch_execute(
        "CREATE TABLE line (id serial PRIMARY KEY, serial dscsa.serial_encrypted);
         GRANT SELECT, INSERT ON line TO itest_writer, itest_reader;
         GRANT USAGE ON SEQUENCE line_id_seq TO itest_writer;",
    )
    .expect("setup");
    let mut w = session(&db, WRITER);
    w.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("writer may load keys");
    w.execute(
        "INSERT INTO line (serial) VALUES (dscsa_encrypt_serial('SN42'))",
        &[],
    )
    .expect("writer may encrypt");
    assert_eq!(
        sqlstate(w.query_one("SELECT dscsa_decrypt(serial) FROM line", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(w.query_one("SELECT dscsa_try_decrypt(serial) FROM line", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(w.query_one(
            "SELECT dscsa_decrypt(dscsa.envelope_bytes(serial)) FROM line",
            &[]
        )),
        "42501"
    );
    // What the writer can read raw is only ciphertext.
    let raw: String = w
        .query_one("SELECT dscsa.armor(serial) FROM line", &[])
        .expect("raw")
        .get(0);
    assert!(raw.starts_with("dscsa:") && !raw.contains("SN42"));

    let mut r = session(&db, READER);
    r.query_one("SELECT dscsa.load_key('k')", &[])
        .expect("reader may load keys");
    let v: String = r
        .query_one("SELECT dscsa_decrypt(serial) FROM line", &[])
        .expect("reader decrypts")
        .get(0);
    assert_eq!(v, "SN42");
    // Readers decrypt only; writing needs the writer role too.
    assert_eq!(
        sqlstate(r.query_one("SELECT dscsa_encrypt_serial('SN43')", &[])),
        "42501"
    );
}

#[test]
fn roles_without_grants_are_refused() {
    let (db, mut su) = fresh_db("nobody");
    su.batch_execute(
        "CREATE TABLE t AS SELECT dscsa_encrypt('x') c; GRANT SELECT ON t TO itest_nobody",
    )
    .expect("setup");
    let mut n = connect(&db, NOBODY);
    assert_eq!(
        sqlstate(n.query_one("SELECT dscsa.dscsa_encrypt('x')", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(n.query_one("SELECT dscsa.dscsa_decrypt(c) FROM t", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(n.query_one("SELECT dscsa.load_key('k')", &[])),
        "42501"
    );
    let mut a = session(&db, ADMIN);
    assert_eq!(
        sqlstate(a.query_one("SELECT dscsa_decrypt(c) FROM t", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(a.query_one("SELECT dscsa_encrypt('x')", &[])),
        "42501"
    );
    a.query_one("SELECT dscsa.create_key('admin_made')", &[])
        .expect("admin creates keys");
    a.query_one("SELECT dscsa.rotate_key('admin_made')", &[])
        .expect("admin rotates keys");
    let n_keys: i64 = a
        .query_one("SELECT count(*) FROM dscsa.keyring", &[])
        .expect("admin reads keyring")
        .get(0);
    assert_eq!(n_keys, 3);
}

#[test]
fn only_admins_read_the_keyring_and_nobody_writes_it_directly() {
    let (db, _su) = fresh_db("keyring");
    for user in [WRITER, READER, NOBODY] {
        let mut c = connect(&db, user);
        assert_eq!(
            sqlstate(c.query_one("SELECT count(*) FROM dscsa.keyring", &[])),
            "42501",
            "{user}"
        );
        assert_eq!(
            sqlstate(c.query_one("SELECT dscsa.create_key('x')", &[])),
            "42501",
            "{user}"
        );
        assert_eq!(
            sqlstate(c.query_one("SELECT dscsa.rotate_key('k')", &[])),
            "42501",
            "{user}"
        );
        assert_eq!(
            sqlstate(c.query_one("SELECT dscsa.retire_key('k', 1)", &[])),
            "42501",
            "{user}"
        );
        assert_eq!(
            sqlstate(c.query("SELECT * FROM dscsa.key_usage('k')", &[])),
            "42501",
            "{user}"
        );
    }
    let mut a = connect(&db, ADMIN);
    assert_eq!(
        sqlstate(a.execute("DELETE FROM dscsa.keyring", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(a.execute("UPDATE dscsa.keyring SET status = 'retired'", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(a.query_one("SELECT * FROM dscsa._wrap_new_key(99, 'x', 1, 'dev')", &[])),
        "42501"
    );
}

#[test]
fn public_has_no_privilege_on_any_object() {
    let (_db, mut su) = fresh_db("public");
    let q =
        |c: &mut postgres::Client, sql: &str| -> i64 { c.query_one(sql, &[]).expect(sql).get(0) };
    // NULL ACLs mean default privileges, which for functions include EXECUTE to PUBLIC.
    assert_eq!(q(&mut su, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'dscsa'::regnamespace::oid AND proacl IS NULL"), 0);
    assert_eq!(
        q(&mut su, "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a WHERE p.pronamespace = 'dscsa'::regnamespace::oid AND a.grantee = 0"),
        0
    );
    assert_eq!(
        q(&mut su, "SELECT count(*) FROM pg_type t, aclexplode(coalesce(t.typacl, acldefault('T', t.typowner))) a WHERE t.typnamespace = 'dscsa'::regnamespace::oid AND t.typtype IN ('b','d') AND t.typcategory <> 'A' AND a.grantee = 0"),
        0
    );
    assert_eq!(
        q(&mut su, "SELECT count(*) FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a WHERE c.relnamespace = 'dscsa'::regnamespace::oid AND a.grantee = 0"),
        0
    );
    assert_eq!(
        q(&mut su, "SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'dscsa' AND a.grantee = 0"),
        0
    );
    // Every SECURITY DEFINER function pins search_path.
    assert_eq!(
        q(
            &mut su,
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'dscsa'::regnamespace::oid AND prosecdef
                    AND NOT coalesce(proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)"
        ),
        0
    );
    assert!(
        q(
            &mut su,
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'dscsa'::regnamespace::oid AND prosecdef"
        ) >= 3
    );
    // Nothing is left at the default volatility by accident: the crypto functions are
    // declared exactly as documented.
    let rows = su
        .query(
            "SELECT proname, provolatile::text, proparallel::text, proisstrict FROM pg_proc
              WHERE pronamespace = 'dscsa'::regnamespace::oid AND proname LIKE 'dscsa\\_%'",
            &[],
        )
        .expect("q");
    assert!(rows.len() >= 30);
    for r in rows {
        let (name, vol, par, strict): (String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let want_vol = if name.starts_with("dscsa_encrypt") {
            "v"
        } else {
            "s"
        };
        assert_eq!(
            (vol.as_str(), par.as_str(), strict),
            (want_vol, "r", true),
            "{name}"
        );
    }
}

#[test]
fn only_superusers_choose_the_kms_hook() {
    let (db, _su) = fresh_db("guc");
    for user in [ADMIN, WRITER, READER, NOBODY] {
        let mut c = connect(&db, user);
        assert_eq!(
            sqlstate(c.batch_execute("SET dscsa.kms_command = 'cat'")),
            "42501",
            "{user}"
        );
        assert_eq!(
            sqlstate(c.batch_execute("SET dscsa.kms_timeout = 1000")),
            "42501",
            "{user}"
        );
        // The configured command is hidden from non-superusers.
        assert_eq!(
            sqlstate(c.query_one("SHOW dscsa.kms_command", &[])),
            "42501",
            "{user}"
        );
    }
}
