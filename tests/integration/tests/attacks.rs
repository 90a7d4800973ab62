//! The privilege escalations and oracles found in pg_dscsa 0.2.0 (issue 7), each replayed
//! as the attacker did it, with ordinary roles holding the minimum grants. Every test here
//! fails against 0.2.0.

use pg_dscsa_itest::{
    connect, count, erp_db, fresh_db, session_with_keys, sqlstate, ADMIN, NOBODY, PLANTER, READER,
    WRITER,
};
use postgres::Client;

fn is_superuser(c: &mut Client, role: &str) -> bool {
    c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .expect("role")
        .get(0)
}

/// A function of the attacking role that, whoever runs it, records the caller and tries
/// to make `attacker` a superuser (which works only when a superuser runs it).
fn plant_payload(c: &mut Client, owner_schema: &str, attacker: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {owner_schema}.loot (who name, what text);
         GRANT INSERT ON {owner_schema}.loot TO PUBLIC;
         CREATE OR REPLACE FUNCTION {owner_schema}.payload(what text) RETURNS boolean
             LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO {owner_schema}.loot VALUES (current_user, what);
             BEGIN
                 EXECUTE 'ALTER ROLE {attacker} SUPERUSER';
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END;
             RETURN false;
         END $$;
         GRANT EXECUTE ON FUNCTION {owner_schema}.payload(text) TO PUBLIC;"
    ))
    .expect("payload");
}

/// 0.2.0: dscsa_admin inserted a registry row naming its own view, whose column called
/// its function; dscsa.key_usage (SECURITY DEFINER) selected from it as the extension
/// owner, and the admin became superuser. Now nobody writes the registry directly, the
/// registry's writer refuses views, and key_usage reads only plain tables named by the
/// system catalogs, so even a row a superuser forged is never followed.
#[test]
fn registry_rows_cannot_be_forged_and_key_usage_runs_no_ones_code() {
    let (db, mut su) = fresh_db("forge");
    su.batch_execute(&format!(
        "GRANT CREATE ON DATABASE {db} TO itest_admin; CREATE SCHEMA IF NOT EXISTS adm AUTHORIZATION itest_admin;"
    ))
    .expect("schema");
    let mut adm = connect(&db, ADMIN);
    plant_payload(&mut adm, "adm", ADMIN);
    adm.batch_execute(
        "CREATE TABLE adm.src (id int, v dscsa.encrypted);
         CREATE VIEW adm.bait AS SELECT id, v, adm.payload('view read') AS x FROM adm.src;",
    )
    .expect("bait");
    for stmt in [
        "INSERT INTO dscsa.protected_columns (relid, column_name, kind, data_key, original_type, original_attnum,
                 original_not_null, blind_index_column, blind_index_key, mode, state)
         VALUES ('adm.bait', 'v', 'generic', 'k', 'text', 2, false, 'x', 'k', 'in_place', 'protected')",
        "UPDATE dscsa.protected_columns SET original_type = 'text USING adm.payload(''x'')::text --'",
        "DELETE FROM dscsa.keyring",
        "INSERT INTO dscsa.key_grants VALUES ('k', 'itest_admin', 'decrypt')",
        "SELECT dscsa._registry_apply('save', 'adm.src', 'v', NULL)",
    ] {
        assert_eq!(sqlstate(adm.execute(stmt, &[])), "42501", "{stmt}");
    }
    // Through the registry's own entry point: the view is refused (not a plain table).
    let forged = "SELECT dscsa._registry('save', 'adm.bait', 'v',
                    ROW('adm.bait'::regclass, 'v', 'generic', '', 'k', 'text', 2, false, NULL, NULL, NULL, NULL, NULL,
                        'in_place', 'protected', NULL, NULL, NULL, 0, NULL, now(), now(), 'x', NULL)::dscsa.protected_columns)";
    assert_eq!(sqlstate(adm.execute(forged, &[])), "42809");
    // A row a superuser forged (superusers bypass every privilege) is not followed either.
    su.batch_execute(
        "INSERT INTO dscsa.protected_columns (relid, column_name, kind, data_key, original_type, original_attnum,
                 original_not_null, blind_index_column, blind_index_key, mode, state)
         VALUES ('adm.bait', 'v', 'generic', 'k', 'text', 2, false, 'x', 'k', 'in_place', 'protected')",
    )
    .expect("superuser forges a row");
    // An inheritance child of an encrypted table that is a view in disguise cannot exist,
    // but a child table is not scanned through its parent either (ONLY).
    adm.query("SELECT * FROM dscsa.key_usage('k')", &[])
        .expect("key usage");
    adm.query_one("SELECT dscsa.rotate_key('k')", &[])
        .expect("rotate");
    let _ = adm.execute("SELECT dscsa.retire_key('k', 1)", &[]);
    assert_eq!(count(&mut su, "SELECT count(*) FROM adm.loot"), 0);
    assert!(!is_superuser(&mut su, ADMIN));
}

/// 0.2.0: unprotect_column pasted protected_columns.original_type into ALTER TABLE with
/// %s; an edited row ran the admin's function when a superuser reverted the column.
#[test]
fn a_forged_original_type_is_refused_before_any_sql_runs() {
    let (db, mut su) = fresh_db("origtype");
    plant_payload(&mut su, "public", NOBODY);
    su.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, c text);
         INSERT INTO t VALUES (1, 'a'), (2, 'b');
         CALL dscsa.protect_column('t', 'c', mode => 'in_place');",
    )
    .expect("protect");
    // Only a superuser can still edit the registry; even then the text is not executed.
    su.batch_execute(
        "UPDATE dscsa.protected_columns SET original_type = 'text USING public.payload(''revert'')::text --'",
    )
    .expect("forge as superuser");
    assert_eq!(
        sqlstate(su.batch_execute("CALL dscsa.unprotect_column('t', 'c')")),
        "22023"
    );
    assert_eq!(count(&mut su, "SELECT count(*) FROM public.loot"), 0);
    let _ = db;
}

/// 0.2.0: pg_dscsa's procedures compared regclass/regtype values with a bare `=`; a role
/// with CREATE on schema public defined `=(oid, regclass)` and friends, and when a DBA
/// (superuser) ran verify_column and the other procedures, the planted operators ran as
/// the DBA, copied decrypted values and made the planter superuser. Now every routine
/// pins search_path or qualifies what it calls.
#[test]
fn operators_planted_in_the_search_path_never_run() {
    let (db, mut su) = erp_db("planted", 300);
    su.batch_execute(
        "CREATE TABLE public.leak (v text); GRANT INSERT ON public.leak TO PUBLIC;
         CREATE TABLE public.plain_copy AS SELECT * FROM unit;",
    )
    .expect("leak table");
    let mut planter = connect(&db, PLANTER);
    plant_payload(&mut planter, "public", PLANTER);
    // Exact-match operators and functions for argument pairs pg_catalog resolves only
    // through implicit casts.
    let mut plant = String::new();
    for (l, r) in [
        ("oid", "regclass"),
        ("regclass", "oid"),
        ("regclass", "regclass"),
        ("name", "text"),
        ("text", "name"),
        ("regtype", "regtype"),
        ("oid", "regtype"),
        ("regtype", "oid"),
        ("name", "name"),
    ] {
        plant.push_str(&format!(
            "CREATE FUNCTION public.eq_{l}_{r}(a {l}, b {r}) RETURNS boolean LANGUAGE sql AS
               'SELECT public.payload(''= {l} {r}'') OR a::text = b::text';
             CREATE OPERATOR public.= (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = public.eq_{l}_{r});
             CREATE FUNCTION public.ne_{l}_{r}(a {l}, b {r}) RETURNS boolean LANGUAGE sql AS
               'SELECT public.payload(''<> {l} {r}'') OR a::text <> b::text';
             CREATE OPERATOR public.<> (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = public.ne_{l}_{r});"
        ));
    }
    plant.push_str(
        "CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE sql AS
           'SELECT CASE WHEN public.payload(''format'') THEN NULL ELSE pg_catalog.format(f, a) END';
         CREATE FUNCTION public.quote_ident(a name) RETURNS text LANGUAGE sql AS
           'SELECT CASE WHEN public.payload(''quote_ident'') THEN NULL ELSE pg_catalog.quote_ident(a::text) END';
         CREATE FUNCTION public.lower(a name) RETURNS text LANGUAGE sql AS
           'SELECT CASE WHEN public.payload(''lower'') THEN NULL ELSE pg_catalog.lower(a::text) END';",
    );
    planter.batch_execute(&plant).expect("plant operators");

    // The DBA, a superuser whose search_path starts with public, runs everything.
    su.batch_execute("SET search_path = public, dscsa; SET dscsa.key_name = 'k'")
        .expect("path");
    for stmt in [
        "SELECT * FROM dscsa.protect_column_problems('unit', 'serial', 'bk')",
        "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', blind_index_key => 'bk', batch_size => 100)",
        "CALL dscsa.protect_column('lot', 'lot_number', kind => 'lot', mode => 'in_place')",
        "CALL dscsa.protect_column('lot', 'expiry', mode => 'online')",
        "SELECT dscsa.create_view('unit')",
        "SELECT dscsa.create_view('lot')",
        "SELECT * FROM dscsa.verify_column('unit', 'serial')",
        "SELECT dscsa.rotate_key('k')",
        "CALL dscsa.reencrypt('unit', 'serial')",
        "SELECT dscsa.rotate_key('bk')",
        "CALL dscsa.reindex_blind('unit', 'serial')",
        "SELECT * FROM dscsa.key_usage('k')",
        "SELECT dscsa.grant_key('k', 'itest_reader', 'decrypt')",
        "SELECT dscsa.revoke_key('k', 'itest_reader')",
        "SELECT dscsa.load_key('k')",
        "SELECT dscsa.drop_view('lot')",
        "CALL dscsa.unprotect_column('lot', 'expiry')",
        "SELECT dscsa.rotate_kek('dev')",
    ] {
        su.batch_execute(stmt)
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    su.batch_execute(
        "CREATE TABLE shipment (id int PRIMARY KEY, sscc text);
         INSERT INTO shipment VALUES (1, 'S1');",
    )
    .expect("shipment");
    su.batch_execute(
        "SELECT dscsa._protect_begin('shipment', 'sscc', 'generic', 'online', NULL, '', 100)",
    )
    .expect("start an online protection");
    su.batch_execute("CALL dscsa.abort_protect_column('shipment', 'sscc')")
        .expect("abort");
    assert_eq!(
        count(&mut su, "SELECT count(*) FROM public.loot"),
        0,
        "a planted operator or function ran"
    );
    assert!(!is_superuser(&mut su, PLANTER));
    assert_eq!(count(&mut su, "SELECT count(*) FROM public.leak"), 0);
}

/// A table with a blind-indexed lot column, and a source table holding other lot
/// ciphertexts the writer may SELECT but not decrypt.
fn lot_tables(c: &mut Client) {
    c.batch_execute(
        "CREATE TABLE batch (id int PRIMARY KEY, lot_number text UNIQUE);
         CALL dscsa.protect_column('batch', 'lot_number', kind => 'lot', mode => 'in_place', blind_index_key => 'bk');
         CREATE TABLE secret_lots (id int PRIMARY KEY, lot dscsa.lot_encrypted);
         INSERT INTO secret_lots SELECT i, dscsa_encrypt_lot('SECRET-' || i) FROM generate_series(1, 20) i;
         GRANT SELECT, INSERT, UPDATE ON batch, secret_lots TO itest_writer, itest_reader, itest_nobody;",
    )
    .expect("lot tables");
}

/// 0.2.0: an encrypt-only writer copied lot ciphertexts into a blind-indexed column and
/// read back their HMACs, then recovered the lots by guessing. Now computing the blind
/// index of a ciphertext needs the decrypt right, unless the writer sealed it itself in
/// this transaction (then it knew the value).
#[test]
fn blind_index_trigger_is_no_oracle_for_writers() {
    let (db, mut su) = erp_db("oracle", 10);
    lot_tables(&mut su);
    let mut w = session_with_keys(&db, WRITER, &["k", "bk"]);
    assert_eq!(
        sqlstate(w.execute(
            "INSERT INTO batch SELECT 100 + id, lot FROM secret_lots",
            &[]
        )),
        "42501"
    );
    // What it encrypts itself goes in, in one statement or later in the same transaction.
    w.execute("INSERT INTO batch VALUES (1, dscsa_encrypt_lot('L1'))", &[])
        .expect("own value");
    assert_eq!(
        sqlstate(w.execute(
            "UPDATE batch SET lot_number = (SELECT lot FROM secret_lots WHERE id = 1)",
            &[]
        )),
        "42501"
    );
    let mut tx = w.transaction().expect("begin");
    let sealed: pg_dscsa_itest::Envelope = tx
        .query_one("SELECT dscsa_encrypt_lot('L2')", &[])
        .expect("seal")
        .get(0);
    tx.execute("INSERT INTO batch VALUES (2, $1)", &[&sealed])
        .expect("own value, later statement");
    tx.commit().expect("commit");
    // The same envelope in a later transaction is no longer known to be its own.
    assert_eq!(
        sqlstate(w.execute("INSERT INTO batch VALUES (3, $1)", &[&sealed])),
        "42501"
    );
    // A reader (who may decrypt) copies freely: it learns nothing it could not read.
    let mut r = session_with_keys(&db, READER, &["k", "bk"]);
    r.execute(
        "INSERT INTO batch SELECT 200 + id, lot FROM secret_lots WHERE id = 2",
        &[],
    )
    .expect("reader may copy");
    assert_eq!(count(&mut su, "SELECT count(*) FROM batch"), 3);
}

/// 0.2.0: during an online protection the sync trigger kept a supplied twin only if it
/// decrypted to the supplied plaintext (an equality oracle), and gave a decrypt-only
/// reader fresh ciphertext although it may not encrypt.
#[test]
fn sync_trigger_is_no_oracle_and_no_encryption_service() {
    let (db, mut su) = erp_db("sync", 10);
    su.batch_execute(
        "CREATE TABLE shipment (id int PRIMARY KEY, lot text);
         INSERT INTO shipment SELECT i, 'LOT-' || i FROM generate_series(1, 50) i;
         CREATE TABLE stolen AS SELECT dscsa_encrypt_lot('LOT-1') AS c;
         GRANT SELECT, INSERT, UPDATE ON shipment, stolen TO itest_writer, itest_reader;",
    )
    .expect("setup");
    // Phase 1 of an online protection only: twin column and sync trigger, no backfill.
    su.batch_execute(
        "SELECT dscsa._protect_begin('shipment', 'lot', 'lot', 'online', NULL, '', 10)",
    )
    .expect("online protection started");
    let mut w = session_with_keys(&db, WRITER, &["k"]);
    let stolen: pg_dscsa_itest::Envelope = w
        .query_one("SELECT c FROM stolen", &[])
        .expect("stolen")
        .get(0);
    // Right guess and wrong guess look the same: the twin is always freshly encrypted.
    for (id, guess) in [(1001, "LOT-1"), (1002, "LOT-2")] {
        w.execute(
            "INSERT INTO shipment (id, lot, lot_dscsa_new) VALUES ($1, $2, $3)",
            &[&id, &guess, &stolen],
        )
        .expect("writer inserts");
        let kept: bool = su
            .query_one(
                "SELECT dscsa.envelope_bytes(lot_dscsa_new) = dscsa.envelope_bytes($1) FROM shipment WHERE id = $2",
                &[&stolen, &id],
            )
            .expect("twin")
            .get(0);
        assert!(!kept, "a supplied twin was kept for guess {guess}");
    }
    // A reader may not have the trigger encrypt for it.
    let mut r = session_with_keys(&db, READER, &["k"]);
    assert_eq!(
        sqlstate(r.execute("INSERT INTO shipment (id, lot) VALUES (2000, 'LOT-X')", &[])),
        "42501"
    );
    assert_eq!(
        sqlstate(r.execute("UPDATE shipment SET lot = 'LOT-Y' WHERE id = 1", &[])),
        "42501"
    );
    su.batch_execute("CALL dscsa.abort_protect_column('shipment', 'lot')")
        .expect("abort");
}

/// 0.2.0: triggers and import_json loaded missing keys with session scope although the
/// session chose 'transaction'; the keys survived COMMIT and DISCARD ALL.
#[test]
fn implicit_loads_never_outlive_the_sessions_own_scope() {
    let (db, mut su) = erp_db("scope", 10);
    lot_tables(&mut su);
    let mut w = connect(&db, WRITER);
    w.batch_execute(
        "SET dscsa.key_name = 'k';
         BEGIN;
         SELECT dscsa.load_key('k', 'transaction');
         INSERT INTO batch VALUES (1, dscsa_encrypt_lot('L1'));",
    )
    .expect("transaction-scoped work");
    assert_eq!(
        count(&mut w, "SELECT count(*) FROM dscsa.loaded_keys() WHERE key_name = 'bk' AND scope = 'transaction'"),
        1,
        "the trigger's implicit load takes the transaction scope"
    );
    w.batch_execute("COMMIT").expect("commit");
    assert_eq!(count(&mut w, "SELECT count(*) FROM dscsa.loaded_keys()"), 0);
    // Nothing loaded explicitly at all: implicit loads are transaction-scoped too.
    w.batch_execute("INSERT INTO batch VALUES (2, dscsa_encrypt_lot('L2'))")
        .expect_err("no data key loaded");
    // After an explicit session load, implicit loads are session-scoped, until
    // DISCARD ALL or RESET ALL unload everything.
    for reset in ["DISCARD ALL", "RESET ALL"] {
        // A lot is CSET 82: no space.
        let lot = format!("after-{}", reset.replace(' ', "-"));
        w.batch_execute(&format!(
            "SET dscsa.key_name = 'k'; SELECT dscsa.load_key('k');
             INSERT INTO batch SELECT coalesce(max(id), 0) + 1, dscsa_encrypt_lot('{lot}') FROM batch;"
        ))
        .expect("session work");
        assert_eq!(count(&mut w, "SELECT count(*) FROM dscsa.loaded_keys()"), 2);
        w.batch_execute(reset).expect(reset);
        assert_eq!(
            count(&mut w, "SELECT count(*) FROM dscsa.loaded_keys()"),
            0,
            "{reset} unloads every key"
        );
    }
}

/// 0.2.0: keys belonged to the backend: after a privileged role loaded them and ran
/// SET ROLE nobody, nobody got blind indexes computed from decrypted values.
#[test]
fn keys_stay_with_the_role_that_loaded_them() {
    let (db, mut su) = erp_db("setrole", 10);
    lot_tables(&mut su);
    // The superuser holds k and bk; a superuser may SET ROLE to anyone.
    su.batch_execute("SET ROLE itest_nobody").expect("set role");
    for stmt in [
        "INSERT INTO batch SELECT 100 + id, lot FROM secret_lots",
        "SELECT dscsa.blind_index('SECRET-1', 'bk', 'lot')",
        "SELECT dscsa.dscsa_decrypt(lot) FROM secret_lots",
    ] {
        assert_eq!(sqlstate(su.execute(stmt, &[])), "42501", "{stmt}");
    }
    su.batch_execute("RESET ROLE").expect("reset");
    // A dscsa_writer member that did not load the key cannot use the superuser's load.
    su.batch_execute("SET ROLE itest_writer").expect("writer");
    assert_eq!(
        sqlstate(su.execute("SELECT dscsa_encrypt_lot('x')", &[])),
        "42501"
    );
    su.batch_execute("SELECT dscsa.load_key('k')")
        .expect("writer loads it");
    su.execute("SELECT dscsa_encrypt_lot('x')", &[])
        .expect("now it may");
    // The writer's load is the writer's: back as the superuser, decrypting with it is
    // refused until the superuser loads the key again.
    su.batch_execute("RESET ROLE").expect("reset");
    assert_eq!(
        sqlstate(su.execute("SELECT dscsa_decrypt(lot) FROM secret_lots", &[])),
        "42501"
    );
    su.batch_execute("SELECT dscsa.load_key('k')")
        .expect("reload");
    assert_eq!(
        count(
            &mut su,
            "SELECT count(*) FROM secret_lots WHERE dscsa_decrypt(lot) LIKE 'SECRET-%'"
        ),
        20
    );
    let _ = db;
}

/// 0.2.0: writers and readers listed keyring metadata through dscsa._key_meta and
/// _active_key_id, and any dscsa role could load any key.
#[test]
fn keys_are_authorized_per_key_and_metadata_per_role() {
    let (db, mut su) = fresh_db("perkey");
    su.batch_execute(
        "DO $$ BEGIN
           CREATE ROLE itest_mfr LOGIN IN ROLE dscsa_writer, dscsa_reader;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN
           CREATE ROLE itest_3pl LOGIN IN ROLE dscsa_writer, dscsa_reader;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         SELECT dscsa.create_key('mfr_key'), dscsa.create_key('tpl_key');
         SELECT dscsa.grant_key('mfr_key', 'itest_mfr', 'encrypt'), dscsa.grant_key('mfr_key', 'itest_mfr', 'decrypt');
         SELECT dscsa.grant_key('tpl_key', 'itest_3pl', 'encrypt'), dscsa.grant_key('tpl_key', 'itest_3pl', 'decrypt');",
    )
    .expect("two tenants");
    for (user, own, other) in [
        ("itest_mfr", "mfr_key", "tpl_key"),
        ("itest_3pl", "tpl_key", "mfr_key"),
    ] {
        let mut c = connect(&db, user);
        c.execute("SELECT dscsa.load_key($1)", &[&own])
            .expect("own key");
        assert_eq!(
            sqlstate(c.execute("SELECT dscsa.load_key($1)", &[&other])),
            "42501",
            "{user} loads {other}"
        );
        let visible: Vec<String> = c
            .query("SELECT DISTINCT key_name FROM dscsa.keys ORDER BY 1", &[])
            .expect("keys view")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            visible.iter().any(|k| k == own) && !visible.iter().any(|k| k == other),
            "{user} sees {visible:?}"
        );
    }
    for user in [WRITER, READER, NOBODY] {
        let mut c = connect(&db, user);
        assert_eq!(
            sqlstate(c.execute("SELECT count(*) FROM dscsa.keyring", &[])),
            "42501",
            "{user}"
        );
        // The 0.2.0 helpers are gone (a role without the schema does not even get that far).
        let state = sqlstate(c.execute("SELECT * FROM dscsa._key_meta(1)", &[]));
        assert!(
            state == "42883" || user == NOBODY && state == "42501",
            "{user}: {state}"
        );
    }
    // Encrypt-only means encrypt-only per key too: a reader granted only encrypt on a key
    // cannot decrypt with it even though it holds dscsa_reader.
    su.batch_execute(
        "SELECT dscsa.create_key('half');
         SELECT dscsa.grant_key('half', 'itest_mfr', 'encrypt');",
    )
    .expect("half");
    let mut m = connect(&db, "itest_mfr");
    m.batch_execute(
        "SELECT dscsa.load_key('half'); SET dscsa.key_name = 'half';
         CREATE TEMP TABLE h AS SELECT dscsa_encrypt('x') AS v;",
    )
    .expect("encrypt with half");
    assert_eq!(
        sqlstate(m.execute("SELECT dscsa_decrypt(v) FROM h", &[])),
        "42501"
    );
    // Revoking takes effect in a session that holds the key, at its next use.
    m.batch_execute("SELECT dscsa.load_key('mfr_key'); SET dscsa.key_name = 'mfr_key'")
        .expect("load");
    m.execute("SELECT dscsa_encrypt('y')", &[]).expect("before");
    su.batch_execute("SELECT dscsa.revoke_key('mfr_key', 'itest_mfr')")
        .expect("revoke");
    assert!(m.execute("SELECT dscsa_encrypt('y')", &[]).is_err());
    assert_eq!(
        count(
            &mut m,
            "SELECT count(*) FROM dscsa.loaded_keys() WHERE key_name = 'mfr_key'"
        ),
        0,
        "the revoked key was unloaded"
    );
}
