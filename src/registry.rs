//! Writes to `dscsa.protected_columns`, the registry of protected columns.
//!
//! No role may change the registry directly (not even dscsa_admin): rows in it are read
//! by code that runs with other roles' rights (a superuser reverting a column, the
//! key-usage scan), so a forged row must be impossible. The procedures that protect and
//! revert columns run with their caller's rights and record what they did through
//! `dscsa._registry(action, table, column, row)`, this invoker-rights C function, which
//!
//! 1. checks that the current role owns the table (or is a member of its owner, or a
//!    superuser): only a table's owner can protect or revert its columns anyway;
//! 2. then, as the extension owner with a pinned search_path (src/owner.rs), calls the
//!    SQL function `dscsa._registry_apply`, which validates the row against the catalog
//!    (a plain table, an existing column of the right type, a known key, a well-formed
//!    original type) and writes it. That function is executable by its owner only.
//!
//! `dscsa._retype_twin(table, column)` works the same way for the one catalog change an
//! online protection makes (the twin column's domain type at the cutover, see
//! `dscsa._retype_twin_apply` in sql/protect.sql).

use dscsa_core::Error;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::authz::owns_relation;
use crate::error::{raise, OrRaise};
use crate::fmgr::{arg_bytes, arg_is_null, pg_v1_function};
use crate::owner;

/// # Safety
/// Called by PostgreSQL with the arguments of `dscsa._registry(text, regclass, name,
/// dscsa.protected_columns)`.
unsafe fn registry(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    if (0..3).any(|n| arg_is_null(fcinfo, n)) {
        raise(Error::InvalidArgument(
            "action, table and column must not be NULL".into(),
        ));
    }
    let action = String::from_utf8_lossy(arg_bytes(fcinfo, 0)).into_owned();
    let relid = pg_sys::Oid::from(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 1).value() as u32);
    let column = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 2);
    let row = (!arg_is_null(fcinfo, 3)).then(|| pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 3));
    let row_type = pg_sys::get_fn_expr_argtype((*fcinfo).flinfo, 3);
    if row_type == pg_sys::InvalidOid {
        raise(Error::Internal("cannot tell the registry row type".into()));
    }
    let args = [
        DatumWithOid::new(action, pg_sys::TEXTOID),
        DatumWithOid::new(relid, pg_sys::REGCLASSOID),
        DatumWithOid::new(column, pg_sys::NAMEOID),
        match row {
            Some(d) => DatumWithOid::new(d, row_type),
            None => DatumWithOid::null_oid(row_type),
        },
    ];
    as_owner_of_table(
        relid,
        "SELECT dscsa._registry_apply($1, $2, $3, $4)",
        &args,
        "registry write",
    );
    pg_sys::Datum::from(0)
}

pg_v1_function!(fn dscsa_registry, pg_finfo_dscsa_registry, registry);

/// # Safety
/// Called by PostgreSQL with the arguments of `dscsa._retype_twin(regclass, name)`,
/// declared STRICT.
unsafe fn retype_twin(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let relid = pg_sys::Oid::from(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).value() as u32);
    let column = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 1);
    let args = [
        DatumWithOid::new(relid, pg_sys::REGCLASSOID),
        DatumWithOid::new(column, pg_sys::NAMEOID),
    ];
    as_owner_of_table(
        relid,
        "SELECT dscsa._retype_twin_apply($1, $2)",
        &args,
        "changing the twin's type",
    );
    pg_sys::Datum::from(0)
}

pg_v1_function!(fn dscsa_retype_twin, pg_finfo_dscsa_retype_twin, retype_twin);

/// Checks that the current role owns table `relid` (or is a member of its owner, or a
/// superuser), then runs `sql` (a statement of this crate, every value a parameter) as
/// the extension owner with a pinned search_path. Raises otherwise.
fn as_owner_of_table(relid: pg_sys::Oid, sql: &str, args: &[DatumWithOid], what: &str) {
    if !owns_relation(relid, owner::current_user()) {
        raise(Error::PermissionDenied(
            "only the owner of a table may protect or revert its columns".into(),
        ));
    }
    owner::as_extension_owner(|| Spi::run_with_args(sql, args))
        .or_raise()
        .unwrap_or_else(|e| raise(Error::Internal(format!("{what} failed: {e}"))));
}
