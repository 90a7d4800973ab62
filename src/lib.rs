//! pg_dscsa: AES-256-GCM field encryption for DSCSA serialization data.
//!
//! This crate is the thin PostgreSQL layer; the format, crypto, KMS protocol and hook
//! runner live in the pure-Rust `dscsa-core` crate. The SQL surface (types, domains,
//! functions, keyring, roles, grants) is written by hand in `sql/` and wired in here:
//! `types.sql` and `tables.sql` are created once; every other file holds routines and
//! views only (CREATE OR REPLACE) and is replayed by upgrade scripts.

use pgrx::prelude::*;

mod audit;
mod authz;
mod backfill;
mod blind;
mod breaker;
mod crypto;
mod error;
mod fmgr;
mod gs1;
mod guc;
mod hooks;
mod integrity;
mod keycache;
mod keyring;
mod keys;
mod kms;
mod kms_status;
mod lookup;
mod owner;
mod readonly;
mod registry;
mod rotation;
mod shmem;
mod triggers;
mod type_io;
mod unguarded;
mod vrs;
mod worker;
mod wrapping;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/types.sql", name = "types", bootstrap);
extension_sql_file!(
    "../sql/functions.sql",
    name = "functions",
    requires = ["types"]
);
extension_sql_file!(
    "../sql/tables.sql",
    name = "tables",
    requires = ["functions"]
);
extension_sql_file!(
    "../sql/keyring.sql",
    name = "keyring",
    requires = ["tables"]
);
extension_sql_file!("../sql/audit.sql", name = "audit", requires = ["keyring"]);
extension_sql_file!("../sql/kms.sql", name = "kms", requires = ["audit"]);
extension_sql_file!(
    "../sql/blind_index.sql",
    name = "blind_index",
    requires = ["kms"]
);
extension_sql_file!("../sql/gs1.sql", name = "gs1", requires = ["blind_index"]);
extension_sql_file!("../sql/protect.sql", name = "protect", requires = ["gs1"]);
extension_sql_file!(
    "../sql/rewrite.sql",
    name = "rewrite",
    requires = ["protect"]
);
extension_sql_file!("../sql/views.sql", name = "views", requires = ["rewrite"]);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    // Only when preloaded: the shared segment, the worker, and query ids for the trail.
    shmem::init();
    worker::register();
    // SAFETY: allowed from _PG_init of a preloaded library (compute_query_id = auto).
    unsafe {
        if pg_sys::process_shared_preload_libraries_in_progress {
            pg_sys::EnableQueryId();
        }
    }
    keys::init();
    backfill::init();
    rotation::init();
    hooks::init();
    lookup::init();
}

/// In-backend tests live in pgrx-tests/ (they compile into the extension under the
/// `pg_test` feature, as `cargo pgrx test` requires).
#[cfg(feature = "pg_test")]
#[path = "../pgrx-tests/mod.rs"]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// The in-backend tests test internals on a server that does not preload pg_dscsa,
    /// so it has no audit trail: auditing is off there (the trail is tested by the
    /// integration suite against a preloaded server).
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["dscsa.kms_timeout = 20000", "dscsa.audit = off"]
    }
}
