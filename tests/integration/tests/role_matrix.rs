//! The role matrix of docs/SECURITY.md, checked cell by cell, both ways: the test reads
//! the table from the document itself (between the `role-matrix` markers), so the
//! document and the behaviour cannot drift apart. ✔ means the role does it; ✘ means it
//! is refused (42501, or for a planted operator: it never runs).

use pg_dscsa_itest::{connect, count, erp_db};
use postgres::Client;

/// The matrix columns and the login role that plays each.
const ROLES: [(&str, &str); 8] = [
    ("superuser", "postgres"),
    ("dscsa_admin", "itest_admin"),
    ("dscsa_writer", "itest_writer"),
    ("dscsa_reader", "itest_reader"),
    // Created by scripts/test.sh with the audit database.
    ("dscsa_auditor", "itest_auditor"),
    ("table owner", "itest_owner"),
    ("search_path planter", "itest_planter"),
    ("PUBLIC", "itest_nobody"),
];

struct Row {
    action: String,
    expected: Vec<bool>,
}

fn matrix() -> Vec<Row> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/SECURITY.md"
    ))
    .expect("docs/SECURITY.md");
    let start = doc.find("<!-- role-matrix -->").expect("start marker");
    let end = doc.find("<!-- /role-matrix -->").expect("end marker");
    let mut lines = doc[start..end].lines().filter(|l| l.starts_with('|'));
    let header: Vec<String> = lines
        .next()
        .expect("header")
        .split('|')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let columns: Vec<&str> = ROLES.iter().map(|(c, _)| *c).collect();
    assert_eq!(&header[2..], &columns[..], "matrix columns");
    lines
        .skip(1) // |---|---|
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let action = cells[2].trim_matches('`').to_string();
            let expected = cells[3..3 + ROLES.len()]
                .iter()
                .map(|c| match c.chars().next() {
                    Some('✔') => true,
                    Some('✘') => false,
                    _ => panic!("cell {c:?} of {action}"),
                })
                .collect();
            Row { action, expected }
        })
        .collect()
}

/// What happened when a role tried an action.
#[derive(Debug)]
enum Outcome {
    Done,
    Refused(String),
}

fn refused(e: postgres::Error) -> Outcome {
    Outcome::Refused(
        e.as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string()),
    )
}

fn run(c: &mut Client, sql: &str) -> Outcome {
    match c.batch_execute(sql) {
        Ok(()) => Outcome::Done,
        Err(e) => refused(e),
    }
}

/// Loads what the role may load, ignoring refusals (the action decides).
fn load_what_it_can(c: &mut Client) {
    for k in ["k", "bk"] {
        let _ = c.batch_execute(&format!("SELECT dscsa.load_key('{k}')"));
    }
    let _ = c.batch_execute("SET dscsa.key_name = 'k'");
}

fn attempt(db: &str, su: &mut Client, action: &str, login: &str, i: usize) -> Outcome {
    let mut c = connect(db, login);
    match action {
        "create_key" => run(
            &mut c,
            &format!("SELECT dscsa.create_key('made_by_{i}'); SELECT dscsa.rotate_key('made_by_{i}');"),
        ),
        "grant_key" => run(
            &mut c,
            "SELECT dscsa.grant_key('k', 'itest_nobody', 'encrypt'); SELECT dscsa.revoke_key('k', 'itest_nobody');",
        ),
        "read_keyring" => run(&mut c, "SELECT count(*) FROM dscsa.keyring"),
        "list_own_keys" => match c.query_one("SELECT count(*) FROM dscsa.keys", &[]) {
            Ok(r) if r.get::<_, i64>(0) > 0 => Outcome::Done,
            Ok(_) => Outcome::Refused("42501 sees no key".into()),
            Err(e) => refused(e),
        },
        "write_catalogs" => run(
            &mut c,
            "UPDATE dscsa.keyring SET kek_ref = kek_ref WHERE false;
             UPDATE dscsa.key_grants SET privilege = privilege WHERE false;
             UPDATE dscsa.protected_columns SET context = context WHERE false;",
        ),
        "load_granted" => run(&mut c, "SELECT dscsa.load_key('k')"),
        "load_ungranted" => run(&mut c, "SELECT dscsa.load_key('secret')"),
        "encrypt" => {
            load_what_it_can(&mut c);
            run(&mut c, "SELECT dscsa.dscsa_encrypt('x')")
        }
        "decrypt" => {
            load_what_it_can(&mut c);
            run(&mut c, "SELECT dscsa.dscsa_decrypt(v) FROM public.secrets")
        }
        "authenticate" => {
            load_what_it_can(&mut c);
            run(&mut c, "SELECT dscsa.authenticate(v) FROM public.secrets")
        }
        "blind_index" => {
            load_what_it_can(&mut c);
            run(&mut c, "SELECT dscsa.blind_index('x', 'bk', 'serial')")
        }
        "index_own_value" => {
            load_what_it_can(&mut c);
            run(
                &mut c,
                &format!("INSERT INTO public.shared_units (serial) VALUES (dscsa.dscsa_encrypt_serial('OWN-{i}'))"),
            )
        }
        "index_copied_value" => {
            load_what_it_can(&mut c);
            run(
                &mut c,
                &format!("INSERT INTO public.shared_units (serial) SELECT s FROM public.other_serials WHERE id = {i}"),
            )
        }
        "protect_own_table" => {
            load_what_it_can(&mut c);
            run(
                &mut c,
                &format!("CALL dscsa.protect_column('public.own_{i}', 'c', mode => 'in_place')"),
            )
        }
        "protect_others_table" => {
            load_what_it_can(&mut c);
            run(
                &mut c,
                &format!("CALL dscsa.protect_column('public.theirs_{i}', 'c', mode => 'in_place')"),
            )
        }
        "verify_column" => {
            load_what_it_can(&mut c);
            run(&mut c, "SELECT * FROM dscsa.verify_column('public.secrets', 'v')")
        }
        "set_kms_command" => run(&mut c, "SET dscsa.kms_command = '/bin/false'"),
        "reuse_keys_after_set_role" => {
            // The superuser's session loads the keys, then becomes the role.
            let mut s = connect(db, "postgres");
            load_what_it_can(&mut s);
            if login != "postgres" {
                s.batch_execute(&format!("SET ROLE {login}")).expect("set role");
            }
            match run(&mut s, "SELECT dscsa.blind_index('x', 'bk', 'serial')") {
                Outcome::Done => Outcome::Done,
                Outcome::Refused(_) => run(&mut s, "SELECT dscsa.dscsa_decrypt(v) FROM public.secrets"),
            }
        }
        "run_planted_operator" => {
            // The role runs what pg_dscsa routines it can with public first in its path.
            load_what_it_can(&mut c);
            for stmt in [
                "SELECT * FROM dscsa.protect_column_problems('public.secrets', 'v')",
                "SELECT * FROM dscsa.verify_column('public.secrets', 'v')",
                "SELECT * FROM dscsa.key_usage('k')",
                "SELECT dscsa.create_view('public.shared_units')",
                "CALL dscsa.reencrypt('public.secrets', 'v')",
            ] {
                let _ = c.batch_execute(stmt);
            }
            if count(su, "SELECT count(*) FROM public.loot") > 0 {
                Outcome::Done
            } else {
                Outcome::Refused("never ran".into())
            }
        }
        // The audit trail lives in its own database (scripts/test.sh: dscsa_audit).
        "read_trail" => {
            let mut a = connect("dscsa_audit", login);
            match a.query("SELECT line FROM dscsa.audit_export(1, 10) line", &[]) {
                Ok(_) => run(&mut a, "SELECT count(*) FROM dscsa.audit_log"),
                Err(e) => refused(e),
            }
        }
        "verify_trail" => run(
            &mut connect("dscsa_audit", login),
            "SELECT * FROM dscsa.audit_verify()",
        ),
        "edit_trail" => run(
            &mut connect("dscsa_audit", login),
            "UPDATE dscsa.audit_log SET count = count WHERE false; DELETE FROM dscsa.audit_log WHERE false;",
        ),
        "audit_off" => run(
            &mut c,
            "SET dscsa.audit = off; RESET dscsa.audit; SET dscsa.audit_durability = async;",
        ),
        "ingest_records" => run(
            &mut connect("dscsa_audit", login),
            "SELECT dscsa.audit_ingest('[]')",
        ),
        "parse_identifier" => run(
            &mut c,
            "SELECT * FROM dscsa.parse_identifier('(01)00300010123455(21)SN1');
             SELECT dscsa.gs1_violation('x', 'gtin');",
        ),
        "identifier_index" => {
            load_what_it_can(&mut c);
            run(
                &mut c,
                "SET dscsa.identifier_index_key = 'bk';
                 SELECT dscsa.identifier_index('00300010123455', 'SN1');",
            )
        }
        "gs1_problems" => run(
            &mut c,
            "SELECT * FROM dscsa.gs1_problems('dscsa.protected_columns', 'column_name', 'lot')",
        ),
        "gs1_validation_off" => run(
            &mut c,
            "SET dscsa.gs1_validation = off; RESET dscsa.gs1_validation;",
        ),
        other => panic!("docs/SECURITY.md names action `{other}`, which this test does not know"),
    }
}

#[test]
fn every_cell_of_the_role_matrix_holds_both_ways() {
    let (db, mut su) = erp_db("matrix", 10);
    su.batch_execute(
        "SELECT dscsa.create_key('secret');
         CREATE TABLE secrets (id int PRIMARY KEY, v dscsa.encrypted);
         INSERT INTO secrets SELECT i, dscsa_encrypt('SECRET-' || i) FROM generate_series(1, 5) i;
         CREATE TABLE other_serials (id int PRIMARY KEY, s dscsa.serial_encrypted);
         INSERT INTO other_serials SELECT i, dscsa_encrypt_serial('OTHER-' || i) FROM generate_series(0, 9) i;
         CREATE TABLE shared_units (id serial PRIMARY KEY, serial text UNIQUE);
         CALL dscsa.protect_column('shared_units', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');
         GRANT SELECT, INSERT ON secrets, other_serials, shared_units TO PUBLIC;
         GRANT USAGE ON SEQUENCE shared_units_id_seq TO PUBLIC;
         CREATE TABLE loot (who name, what text); GRANT INSERT ON loot TO PUBLIC;",
    )
    .expect("matrix database");
    for (i, (_, login)) in ROLES.iter().enumerate() {
        su.batch_execute(&format!(
            "CREATE TABLE own_{i} (id int PRIMARY KEY, c text); INSERT INTO own_{i} VALUES (1, 'x');
             ALTER TABLE own_{i} OWNER TO {login};
             CREATE TABLE theirs_{i} (id int PRIMARY KEY, c text); INSERT INTO theirs_{i} VALUES (1, 'x');
             GRANT ALL ON theirs_{i} TO {login};"
        ))
        .expect("tables");
    }
    // The planter's operators, in public, which every role's search_path starts with.
    let mut planter = connect(&db, "itest_planter");
    planter
        .batch_execute(
            "CREATE FUNCTION public.trap(a oid, b regclass) RETURNS boolean LANGUAGE sql AS
               'INSERT INTO public.loot VALUES (current_user, ''='') RETURNING false';
             CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.trap);
             CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE sql AS
               'INSERT INTO public.loot VALUES (current_user, ''format'') RETURNING f';",
        )
        .expect("plant");

    let rows = matrix();
    assert!(rows.len() >= 15, "the matrix has {} rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        for (i, ((column, login), expected)) in ROLES.iter().zip(&row.expected).enumerate() {
            let outcome = attempt(&db, &mut su, &row.action, login, i);
            let ok = match (&outcome, expected) {
                (Outcome::Done, true) => true,
                (Outcome::Refused(state), false) => {
                    state.starts_with("42501") || row.action == "run_planted_operator"
                }
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{} / {column}: expected {}, got {outcome:?}",
                    row.action,
                    if *expected { "✔" } else { "✘ (42501)" }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "role matrix violations:\n{}",
        failures.join("\n")
    );
}
