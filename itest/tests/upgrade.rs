//! ALTER EXTENSION pg_dscsa UPDATE from the released 0.1.0 gives exactly the catalog of a
//! fresh installation of the current version, and keeps every key and value working.
//! scripts/test.sh installs the archived 0.1.0 script (sql/archive/) for this.

use pg_dscsa_itest::{connect, count};
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
           SELECT format('rel %s %s [%s] %s', c.relname, c.relkind,
                         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(c.relacl) x),
                         coalesce(obj_description(c.oid, 'pg_class'), ''))
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

fn database(name: &str) -> Client {
    let mut admin = connect("postgres", "postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .expect("drop");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create");
    connect(name, "postgres")
}

#[test]
fn update_from_0_1_0_matches_a_fresh_install_and_keeps_data() {
    let pid = std::process::id();
    let mut old = database(&format!("it_upgrade_old_{pid}"));
    old.batch_execute(
        "CREATE EXTENSION pg_dscsa VERSION '0.1.0';
         SET search_path = public, dscsa;
         SELECT dscsa.create_key('legacy');
         SELECT dscsa.load_key('legacy');
         SET dscsa.key_name = 'legacy';
         CREATE TABLE unit (id int PRIMARY KEY, plain text NOT NULL, serial dscsa.serial_encrypted NOT NULL);
         INSERT INTO unit SELECT i, 'SN' || i, dscsa_encrypt_serial('SN' || i) FROM generate_series(1, 1000) i;",
    )
    .expect("0.1.0 database");
    let version: String = old
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_dscsa'",
            &[],
        )
        .expect("version")
        .get(0);
    assert_eq!(version, "0.1.0");

    old.batch_execute("ALTER EXTENSION pg_dscsa UPDATE")
        .expect("update");
    let version: String = old
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_dscsa'",
            &[],
        )
        .expect("version")
        .get(0);
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "itest and extension versions move together"
    );

    let mut fresh = database(&format!("it_upgrade_new_{pid}"));
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
        upgraded.len() > 150,
        "catalog query found too little: {}",
        upgraded.len()
    );

    // Keys and data of 0.1.0 keep working, and the new features work on them.
    old.batch_execute(
        "SET search_path = public, dscsa; SET dscsa.key_name = 'legacy';
         SELECT dscsa.load_key('legacy');
         SELECT dscsa.create_blind_index_key('legacy_bidx');
         SELECT dscsa.load_key('legacy_bidx');",
    )
    .expect("keys after update");
    assert_eq!(
        count(
            &mut old,
            "SELECT count(*) FROM unit WHERE dscsa_decrypt(serial) = plain"
        ),
        1000
    );
    old.batch_execute(
        "CREATE TABLE lot (id int PRIMARY KEY, lot_number text NOT NULL UNIQUE);
         INSERT INTO lot SELECT i, 'L' || i FROM generate_series(1, 100) i;
         CALL dscsa.protect_column('lot', 'lot_number', kind => 'lot', mode => 'in_place', blind_index_key => 'legacy_bidx');
         SELECT dscsa.rotate_key('legacy');
         SELECT dscsa.load_key('legacy');",
    )
    .expect("new features on an updated database");
    old.batch_execute("CALL dscsa.reencrypt('unit', 'serial')")
        .expect("reencrypt");
    assert_eq!(
        count(&mut old, "SELECT count(*) FROM unit WHERE dscsa_decrypt(serial) = plain AND dscsa.envelope_key_id(serial) = dscsa._active_key_id('legacy')"),
        1000
    );
    assert_eq!(
        count(&mut old, "SELECT count(*) FROM lot WHERE lot_number_bidx = dscsa.blind_index('L7', 'legacy_bidx', 'lot')"),
        1
    );
}
