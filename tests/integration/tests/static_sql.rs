//! Static checks of the installed SQL surface (docs/SECURITY.md, "search_path"):
//!
//! - every SECURITY DEFINER routine pins search_path = pg_catalog, pg_temp, and only
//!   dscsa.key_usage runs dynamic SQL, built from the system catalogs, never from a table
//!   any role can write;
//! - every routine written in SQL or PL/pgSQL pins search_path, except the procedures that
//!   COMMIT (a SET clause forbids COMMIT), whose bodies contain no operator and call only
//!   schema-qualified dscsa functions;
//! - the code pg_dscsa generates (view triggers) pins search_path too.

use pg_dscsa_itest::{erp_db, fresh_db};

const PINNED: &str = "search_path=pg_catalog, pg_temp";

/// Other SET clauses a routine may carry beside the pinned search_path: each one is
/// restored when the routine returns (dscsa._with_lock_retries bounds its lock waits).
const OTHER_SETTINGS: [&str; 1] = ["lock_timeout="];

/// The search_path pinned, and nothing else set but the settings allowed above.
fn pins_search_path(config: &[String]) -> bool {
    config.first().map(String::as_str) == Some(PINNED)
        && config[1..]
            .iter()
            .all(|c| OTHER_SETTINGS.iter().any(|s| c.starts_with(s)))
}

/// The procedures that COMMIT per batch and so cannot have a SET clause.
const COMMIT_SHELLS: [&str; 3] = ["protect_column", "reencrypt", "reindex_blind"];

/// Definer routines allowed to run dynamic SQL, each justified in sql/keyring.sql.
const DEFINER_DYNAMIC_SQL: [&str; 1] = ["key_usage"];

/// `src` without comments and string literals (so that what is left is code).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'\'' {
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' && b.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else if b[i] == b'\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            i += 1;
            out.push_str(" '' ");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Operators and unqualified calls in a COMMIT shell's body: everything that PostgreSQL
/// would resolve through the caller's search_path.
fn unpinned_lookups(body: &str) -> Vec<String> {
    let code = code_only(body);
    let mut found = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied().unwrap_or(' ');
        if c == ':' && (next == '=' || next == ':') || c == '=' && next == '>' {
            i += 2; // assignment, cast, named argument
            continue;
        }
        if "=<>!|+-*/%~^@#&".contains(c) {
            found.push(format!("operator '{c}' near: {}", context(&chars, i)));
        }
        if c == '(' {
            // The identifier before the parenthesis must be dscsa-qualified.
            let mut j = i;
            while j > 0 && chars[j - 1] == ' ' {
                j -= 1;
            }
            let end = j;
            while j > 0
                && (chars[j - 1].is_alphanumeric() || chars[j - 1] == '_' || chars[j - 1] == '.')
            {
                j -= 1;
            }
            let ident: String = chars[j..end].iter().collect();
            if !ident.is_empty() && !ident.starts_with("dscsa.") {
                found.push(format!(
                    "unqualified call '{ident}(' near: {}",
                    context(&chars, i)
                ));
            }
        }
        i += 1;
    }
    found
}

fn context(chars: &[char], i: usize) -> String {
    let start = i.saturating_sub(30);
    let end = (i + 30).min(chars.len());
    chars[start..end]
        .iter()
        .collect::<String>()
        .replace('\n', " ")
}

#[test]
fn definer_routines_pin_search_path_and_build_no_sql_from_table_data() {
    let (_db, mut c) = fresh_db("static_definer");
    let rows = c
        .query(
            "SELECT p.proname::text, coalesce(p.proconfig, '{}'), p.prosrc, l.lanname::text
               FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
              WHERE p.pronamespace = 'dscsa'::regnamespace::oid AND p.prosecdef",
            &[],
        )
        .expect("definer routines");
    assert!(
        rows.len() >= 10,
        "found only {} definer routines",
        rows.len()
    );
    for r in rows {
        let (name, config, src, lang): (String, Vec<String>, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!(config, [PINNED], "{name} must pin search_path");
        assert_ne!(
            lang, "c",
            "{name}: a C function cannot see its caller; keep definer rights in SQL"
        );
        let code = code_only(&src).to_lowercase();
        let dynamic = code.split_whitespace().any(|w| w == "execute");
        if dynamic {
            assert!(
                DEFINER_DYNAMIC_SQL.contains(&name.as_str()),
                "{name} runs dynamic SQL with definer rights"
            );
        }
        // Relations of the extension a definer routine reads: only the keyring and the
        // grants, and none at all where it runs dynamic SQL (whose inputs must then come
        // from the system catalogs).
        let src_lower = src.to_lowercase();
        for rel in ["protected_columns", "key_grants", "keys"] {
            let reads = src_lower.contains(&format!("dscsa.{rel} "))
                || src_lower.contains(&format!("dscsa.{rel}\n"));
            if dynamic {
                assert!(!reads, "{name} reads dscsa.{rel} and runs dynamic SQL");
            }
        }
    }
}

#[test]
fn every_sql_routine_pins_search_path_or_is_an_operator_free_commit_shell() {
    let (_db, mut c) = fresh_db("static_pinned");
    let rows = c
        .query(
            "SELECT p.proname::text, coalesce(p.proconfig, '{}'), p.prosrc, p.prokind::text
               FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
              WHERE p.pronamespace = 'dscsa'::regnamespace::oid AND l.lanname IN ('sql', 'plpgsql')",
            &[],
        )
        .expect("routines");
    assert!(rows.len() > 40, "found only {} routines", rows.len());
    let mut shells = Vec::new();
    for r in rows {
        let (name, config, src, kind): (String, Vec<String>, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if pins_search_path(&config) {
            continue;
        }
        assert!(
            COMMIT_SHELLS.contains(&name.as_str()) && kind == "p",
            "{name} neither pins search_path nor is a COMMIT shell"
        );
        let lookups = unpinned_lookups(&src);
        assert!(lookups.is_empty(), "{name}: {lookups:#?}");
        shells.push(name);
    }
    shells.sort();
    assert_eq!(shells, COMMIT_SHELLS, "every COMMIT shell was checked");
}

#[test]
fn the_checker_finds_what_it_must() {
    assert!(unpinned_lookups("BEGIN x := dscsa.f(a, b); COMMIT; END").is_empty());
    assert!(unpinned_lookups("BEGIN EXIT WHEN job.finished; -- a = b\n END").is_empty());
    assert!(unpinned_lookups("BEGIN RAISE NOTICE 'a = b || c'; END").is_empty());
    assert_eq!(
        unpinned_lookups("BEGIN IF a = b THEN NULL; END IF; END").len(),
        1
    );
    assert_eq!(unpinned_lookups("BEGIN x := y || z; END").len(), 2);
    assert_eq!(unpinned_lookups("BEGIN x := format('%s', y); END").len(), 1);
    assert_eq!(
        unpinned_lookups("BEGIN x := pg_catalog.lower(y); END").len(),
        1
    );
}

#[test]
fn generated_view_triggers_pin_search_path() {
    let (_db, mut c) = erp_db("static_view", 20);
    c.batch_execute(
        "CALL dscsa.protect_column('unit', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');
         SELECT dscsa.create_view('unit');",
    )
    .expect("view");
    let config: Vec<String> = c
        .query_one(
            "SELECT coalesce(p.proconfig, '{}') FROM pg_catalog.pg_proc p
              WHERE p.proname OPERATOR(pg_catalog.=) 'unit_plain_dscsa_write'",
            &[],
        )
        .expect("trigger function")
        .get(0);
    assert_eq!(config, [PINNED]);
}

/// pgrx's `Spi::get_one`, `get_two`, ... run their query read-write, which assigns the
/// transaction an id: "cannot assign TransactionIds during recovery" on a hot standby,
/// and an XID spent per read elsewhere. The extension's reads go through
/// src/readonly.rs; this keeps it so.
#[test]
fn the_extension_reads_through_read_only_spi() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../src"));
    let mut files = Vec::new();
    walk(src, &mut files);
    assert!(files.len() > 20, "found {} source files", files.len());
    let mut offenders = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for (n, line) in text.lines().enumerate() {
            if line.contains("Spi::get_") && !line.trim_start().starts_with("//") {
                offenders.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "read-write SPI reads:\n{}",
        offenders.join("\n")
    );
}
