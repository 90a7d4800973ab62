//! ALTER EXTENSION pg_dscsa UPDATE from each released version (0.1.0 through the chain of
//! upgrade scripts, 0.2.0 directly) gives exactly the catalog of a fresh installation of
//! the current version, and keeps every key, value and role working. scripts/test.sh
//! installs the archived installation scripts (sql/archive/) for this.

use pg_dscsa_itest::{
    connect, connect_keeping_notices, count, create_test_roles, empty_db, explain, search_path,
    session_with_keys, sqlstate, ADMIN, READER, WRITER,
};
use postgres::Client;

/// Everything the extension defines, as sorted lines: functions (source digest,
/// volatility, strictness, parallel safety, definer, settings, grants, comment), columns,
/// constraints, indexes, relations and types with grants, members, dumped config tables.
fn catalog(c: &mut Client) -> Vec<String> {
    // The same search_path for both databases, so that names print alike.
    c.batch_execute("SET search_path = pg_catalog")
        .expect("search_path");
    c.query(
        "WITH acl(a, t) AS (SELECT NULL::aclitem[], NULL::text)
         SELECT line FROM (
           SELECT format('fn %s %s %s%s%s%s %s [%s] %s', p.oid::regprocedure, md5(p.prosrc), p.provolatile,
                         p.proisstrict, p.proparallel, p.prosecdef, coalesce(array_to_string(p.proconfig, ','), ''),
                         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(p.proacl) x),
                         coalesce(obj_description(p.oid, 'pg_proc'), '')) AS line
             FROM pg_proc p WHERE p.pronamespace = 'dscsa'::regnamespace
           UNION ALL
           SELECT format('col %s.%s %s %s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                         a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''))
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = 'dscsa'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
           UNION ALL
           SELECT format('con %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
             FROM pg_constraint WHERE connamespace = 'dscsa'::regnamespace
           UNION ALL
           SELECT format('idx %s', pg_get_indexdef(i.indexrelid))
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'dscsa'::regnamespace
           UNION ALL
           SELECT format('rel %s %s [%s] %s %s %s', c.relname, c.relkind,
                         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(c.relacl) x),
                         coalesce(obj_description(c.oid, 'pg_class'), ''), c.reloptions,
                         CASE WHEN c.relkind = 'v' THEN md5(pg_get_viewdef(c.oid)) END)
             FROM pg_class c WHERE c.relnamespace = 'dscsa'::regnamespace
           UNION ALL
           SELECT format('type %s [%s]', t.typname, (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(t.typacl) x))
             FROM pg_type t WHERE t.typnamespace = 'dscsa'::regnamespace
           UNION ALL
           SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
             FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
              AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_dscsa')
           UNION ALL
           SELECT 'config ' || x::regclass::text FROM pg_extension, unnest(extconfig) x WHERE extname = 'pg_dscsa'
           UNION ALL
           SELECT 'schema acl ' || (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(n.nspacl) x)
             FROM pg_namespace n WHERE n.nspname = 'dscsa'
         ) s ORDER BY line",
        &[],
    )
    .expect("catalog")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Installs pg_dscsa `from` in a new database with data the way that version made it,
/// runs ALTER EXTENSION UPDATE, and checks the result is a fresh installation of this
/// version, object by object, with every key and value still working.
/// Updates a database made with version `from` to this one; returns it, a session on it,
/// and the notices the update sent.
fn update_from(from: &str) -> (String, Client, Vec<String>) {
    let (db, mut old) = empty_db(&format!("upgrade_{}", from.replace('.', "_")));
    // The old versions are what 0.3.0 fixes: their routines do not pin search_path, so
    // they run here without the search_path pass's traps.
    old.batch_execute(&format!(
        "SET search_path = public, dscsa;
         CREATE EXTENSION pg_dscsa VERSION '{from}';
         SELECT dscsa.create_key('legacy');
         SELECT dscsa.load_key('legacy');
         SET dscsa.key_name = 'legacy';
         CREATE TABLE unit (id int PRIMARY KEY, plain text NOT NULL, serial dscsa.serial_encrypted NOT NULL);
         INSERT INTO unit SELECT i, 'SN' || i, dscsa_encrypt_serial('SN' || i) FROM generate_series(1, 1000) i;"
    ))
    .expect("old database");
    create_test_roles(&mut old);
    if from != "0.1.0" {
        // 0.2.0 protected columns with blind indexes and generated views.
        old.batch_execute(
            "SELECT dscsa.create_blind_index_key('legacy_bidx');
             SELECT dscsa.load_key('legacy_bidx');
             CREATE TABLE lot (id int PRIMARY KEY, lot_number text NOT NULL UNIQUE);
             INSERT INTO lot SELECT i, 'L' || i FROM generate_series(1, 100) i;
             CALL dscsa.protect_column('lot', 'lot_number', kind => 'lot', mode => 'in_place', blind_index_key => 'legacy_bidx');
             SELECT dscsa.create_view('lot');
             GRANT SELECT, INSERT ON lot, lot_plain TO itest_writer, itest_reader;
             CREATE TABLE lot_event (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, lot text NOT NULL);
             INSERT INTO lot_event (lot) VALUES ('L1');
             CALL dscsa.protect_column('lot_event', 'lot', kind => 'lot', mode => 'in_place');
             SELECT dscsa.create_view('lot_event');",
        )
        .expect("0.2.0 features");
    }
    let version = |c: &mut Client| -> String {
        c.query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_dscsa'",
            &[],
        )
        .expect("version")
        .get(0)
    };
    assert_eq!(version(&mut old), from);
    let (mut updater, notices) = connect_keeping_notices(&db, "postgres");
    updater
        .batch_execute("SET search_path = public, dscsa; ALTER EXTENSION pg_dscsa UPDATE")
        .expect("update");
    drop(updater);
    let notices = notices.lock().map(|n| n.clone()).unwrap_or_default();
    assert_eq!(
        version(&mut old),
        env!("CARGO_PKG_VERSION"),
        "tests and extension versions move together"
    );

    let (_fresh_name, mut fresh) = empty_db(&format!("upgrade_fresh_{}", from.replace('.', "_")));
    fresh
        .batch_execute("CREATE EXTENSION pg_dscsa")
        .expect("fresh");
    let (upgraded, installed) = (catalog(&mut old), catalog(&mut fresh));
    let only_upgraded: Vec<_> = upgraded.iter().filter(|l| !installed.contains(l)).collect();
    let only_fresh: Vec<_> = installed.iter().filter(|l| !upgraded.contains(l)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "upgraded and fresh catalogs differ:\n only after UPDATE: {only_upgraded:#?}\n only in a fresh install: {only_fresh:#?}"
    );
    assert!(
        upgraded.len() > 200,
        "catalog query found too little: {}",
        upgraded.len()
    );

    // Keys and data of the old version keep working, and the new features work on them.
    old.batch_execute(&format!(
        "SET search_path = {}; SET dscsa.key_name = 'legacy';
         SELECT dscsa.load_key('legacy');",
        search_path()
    ))
    .expect("keys after update");
    assert_eq!(
        count(
            &mut old,
            "SELECT count(*) FROM unit WHERE dscsa_decrypt(serial) = plain"
        ),
        1000
    );
    (db, old, notices)
}

/// A view generated before 0.4.0 over a table with an identity column keeps its old
/// write trigger: the update names it with the call that regenerates it (and no other
/// view), the old trigger fails as it did, and the named call repairs it.
fn assert_outdated_view_named_and_regenerated(old: &mut Client, notices: &[String]) {
    let named: Vec<&String> = notices
        .iter()
        .filter(|n| n.contains("generated by an earlier version"))
        .collect();
    assert_eq!(named.len(), 1, "{notices:?}");
    assert!(
        named[0].contains("lot_event_plain") && named[0].contains("public.lot_event"),
        "{named:?}"
    );
    let call = named[0]
        .split("Regenerate it (grants and comment are kept): ")
        .nth(1)
        .expect("the hint has the call");
    assert_eq!(
        call,
        "SELECT dscsa.create_view('public.lot_event', 'lot_event_plain');"
    );
    assert_eq!(
        sqlstate(old.execute("INSERT INTO lot_event_plain (lot) VALUES ('L2')", &[])),
        "428C9",
        "the old trigger writes the identity column"
    );
    old.batch_execute(call).expect("the hinted call");
    let id: i32 = old
        .query_one(
            "INSERT INTO lot_event_plain (lot) VALUES ('L2') RETURNING id",
            &[],
        )
        .expect("insert through the regenerated view")
        .get(0);
    assert_eq!(id, 2);
    assert_eq!(
        count(
            old,
            "SELECT count(*) FROM lot_event_plain WHERE lot IN ('L1', 'L2')"
        ),
        2
    );
}

#[test]
fn update_from_0_1_0_matches_a_fresh_install_and_keeps_data() {
    let (_db, mut old, notices) = update_from("0.1.0");
    assert!(
        !notices
            .iter()
            .any(|n| n.contains("generated by an earlier version")),
        "{notices:?}"
    );
    old.batch_execute(
        "SELECT dscsa.create_blind_index_key('legacy_bidx');
         SELECT dscsa.grant_key('legacy_bidx', 'dscsa_writer', 'blind_index');
         SELECT dscsa.load_key('legacy_bidx');
         CREATE TABLE lot (id int PRIMARY KEY, lot_number text NOT NULL UNIQUE);
         INSERT INTO lot SELECT i, 'L' || i FROM generate_series(1, 100) i;
         CALL dscsa.protect_column('lot', 'lot_number', kind => 'lot', mode => 'in_place', blind_index_key => 'legacy_bidx');
         SELECT dscsa.rotate_key('legacy');
         SELECT dscsa.load_key('legacy');",
    )
    .expect("new features on an updated database");
    old.batch_execute("CALL dscsa.reencrypt('unit', 'serial')")
        .expect("reencrypt");
    assert_eq!(
        count(&mut old, "SELECT count(*) FROM unit WHERE dscsa_decrypt(serial) = plain AND dscsa.envelope_key_id(serial) = dscsa._active_version('legacy', 'data')"),
        1000
    );
    assert_eq!(
        count(&mut old, "SELECT count(*) FROM lot WHERE lot_number_bidx = dscsa.blind_index('L7', 'legacy_bidx', 'lot')"),
        1
    );
}

/// The 0.3.0 security fixes reach an existing 0.2.0 installation: the registry and the
/// keyring are no longer writable by dscsa_admin, and the roles that used the keys
/// keep using them through the grants the upgrade made.
#[test]
fn update_from_0_2_0_closes_the_holes_and_keeps_roles_working() {
    let (db, mut old, notices) = update_from("0.2.0");
    assert_outdated_view_named_and_regenerated(&mut old, &notices);
    let mut admin = connect(&db, ADMIN);
    for stmt in [
        "INSERT INTO dscsa.protected_columns SELECT * FROM dscsa.protected_columns",
        "UPDATE dscsa.protected_columns SET original_type = 'text'",
        "DELETE FROM dscsa.protected_columns",
        "UPDATE dscsa.keyring SET status = 'retired'",
    ] {
        assert_eq!(sqlstate(admin.execute(stmt, &[])), "42501", "{stmt}");
    }
    let granted: Vec<String> = old
        .query(
            "SELECT key_name || ':' || grantee::text || ':' || privilege FROM dscsa.key_grants ORDER BY 1",
            &[],
        )
        .expect("grants")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        granted,
        [
            "legacy:dscsa_admin:decrypt",
            "legacy:dscsa_reader:decrypt",
            "legacy:dscsa_writer:encrypt",
            "legacy_bidx:dscsa_reader:blind_index",
            "legacy_bidx:dscsa_writer:blind_index",
        ]
    );
    // The writer inserts through the view made by 0.2.0 (blind index by trigger), the
    // reader reads it back: as before the upgrade.
    let mut w = session_with_keys(&db, WRITER, &["legacy", "legacy_bidx"]);
    w.batch_execute("SET dscsa.key_name = 'legacy'; INSERT INTO lot_plain VALUES (500, 'L500')")
        .expect("writer after upgrade");
    let mut r = session_with_keys(&db, READER, &["legacy", "legacy_bidx"]);
    assert_eq!(
        count(
            &mut r,
            "SELECT count(*) FROM lot_plain WHERE lot_number IN ('L7', 'L500')"
        ),
        2
    );
    assert_eq!(
        count(&mut r, "SELECT count(*) FROM lot WHERE lot_number_bidx = dscsa.blind_index('L500', 'legacy_bidx', 'lot')"),
        1
    );
}

/// 0.4.0 on a 0.3.0 installation: the GS1 functions arrive, and columns protected by
/// 0.3.0 get transparent blind-index lookups without being touched.
#[test]
fn update_from_0_3_0_adds_gs1_identifiers_and_transparent_lookups() {
    let (_db, mut old, notices) = update_from("0.3.0");
    assert_outdated_view_named_and_regenerated(&mut old, &notices);
    old.batch_execute("SELECT dscsa.load_key('legacy_bidx')")
        .expect("blind-index key");
    let plan = explain(
        &mut old,
        "COSTS OFF",
        "SELECT id FROM lot_plain WHERE lot_number = 'L7'",
    );
    assert!(
        pg_dscsa_itest::compares_blind_index(&plan, "lot_number_bidx") && plan.contains("Index"),
        "{plan}"
    );
    assert_eq!(
        count(
            &mut old,
            "SELECT count(*) FROM lot_plain WHERE lot_number = 'L7'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut old,
            "SELECT count(*) FROM dscsa.parse_identifier('urn:epc:id:sgtin:0614141.812345.6789') WHERE gtin14 = '80614141123458'"
        ),
        1
    );
}
