//! Transparent blind-index lookups (docs/BLIND_INDEX.md, "Transparent lookups").
//!
//! An application's own SQL compares decrypted values: `WHERE name = $1` through the
//! generated `<table>_plain` view becomes `dscsa_decrypt(t.name, '') = $1`, which no index
//! can answer, so every row would be decrypted. Before planning, this hook finds such
//! comparisons on a protected column that has a blind index and adds the condition they
//! imply:
//!
//! ```text
//! dscsa_decrypt(t.col[, ctx]) = v          ->  ... AND t.col_bidx = dscsa._blind_index_slot(v, key, kind, 1, 1)
//! dscsa_decrypt(t.col[, ctx]) IN (a, b)    ->  ... AND t.col_bidx = ANY (dscsa.blind_index_candidates(ARRAY[a, b], key, kind))
//! dscsa_decrypt(t.col) = u.other_col       ->  ... AND t.col_bidx = ANY (dscsa.blind_index_candidates(u.other_col, key, kind))
//! ```
//!
//! (A lookup's candidates are one slot per loaded key version, so that the planner can
//! count them, and a plain `=` when there is one; on foreign tables each is an init
//! plan, a parameter that postgres_fdw sends to the remote server: see condition.rs.)
//!
//! The original comparison stays as the recheck, so results are exactly those of the
//! query as written: equal plaintexts have equal normalized forms and so equal blind
//! indexes under the same key version, and the candidates cover every version the session
//! has loaded. `v` is an expression the row does not determine (a constant, a parameter,
//! or a column of another table in a join), so the STABLE candidates are evaluated once
//! per index scan: once per execution for a lookup, once per outer row in
//! a nested-loop join. Conditions are added only to AND lists (WHERE and JOIN ... ON),
//! where `A AND (implied by A)` is `A`; through a view the condition is placed inside the
//! view's query when `v` is a constant or parameter and the comparison is in the WHERE
//! clause or an inner join (where a view row failing it could not reach the result).
//!
//! Which columns qualify is read from the relation cache: the `dscsa.blind_index_trigger`
//! that `dscsa.protect_column` attaches names the encrypted column, its blind-index column
//! and key. Nothing is added (the query runs as written) when `dscsa.blind_index_rewrite`
//! is off, when the operator is not text equality under a deterministic collation, when
//! the session has not loaded the blind-index key for its current role, or when the role
//! may not execute the candidates function or read the blind-index column.
//!
//! The same slots spell `dscsa.identifier_index_candidates(gtin, serial, key)` for a VRS
//! probe, through that function's planner support function (support.rs).
//!
//! pgrx 0.18 has no hook helpers: the hook pointer is set by hand in `init`, the previous
//! hook is chained, and the hook itself follows src/hooks.rs: it calls the planner raw
//! and does its own work in a `#[pg_guard]` function.

use std::ffi::{c_char, c_int, c_void};

mod catalog;
mod condition;
mod nodes;
mod support;
mod target;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::guc;

use catalog::*;
use condition::*;
use nodes::*;
use target::*;

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

mod raw {
    use super::pg_sys;

    extern "C-unwind" {
        pub fn standard_planner(
            parse: *mut pg_sys::Query,
            query_string: *const std::ffi::c_char,
            cursor_options: std::ffi::c_int,
            bound_params: pg_sys::ParamListInfo,
        ) -> *mut pg_sys::PlannedStmt;
    }
}

pub fn init() {
    // SAFETY: _PG_init runs once per process on the backend's only thread; the previous
    // hook is saved before ours replaces it.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
    }
    catalog::init();
}

unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const c_char,
    cursor_options: c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    if guc::BLIND_INDEX_REWRITE.get() {
        add_blind_index_conditions(parse);
    }
    match PREV_PLANNER {
        Some(prev) => prev(parse, query_string, cursor_options, bound_params),
        None => raw::standard_planner(parse, query_string, cursor_options, bound_params),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn add_blind_index_conditions(parse: *mut pg_sys::Query) {
    let Some(catalog) = Catalog::get() else {
        return;
    };
    rewrite_query(parse, &catalog);
    let ctx = &catalog as *const Catalog as *mut c_void;
    pg_sys::query_tree_walker(parse, Some(walker), ctx, 0);
}

/// Visits every query nested in the statement (views, subqueries, CTEs, sublinks).
/// Guarded like every callback PostgreSQL calls: an error inside becomes a PostgreSQL
/// ERROR at this boundary instead of unwinding through C frames.
#[pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if is_a(node, pg_sys::NodeTag::T_Query) {
        let q = node.cast::<pg_sys::Query>();
        rewrite_query(q, &*(ctx as *const Catalog));
        return pg_sys::query_tree_walker(q, Some(walker), ctx, 0);
    }
    pg_sys::expression_tree_walker(node, Some(walker), ctx)
}

/// The decrypted side and the compared value of an equality conjunct, if it is one.
unsafe fn equality(
    conjunct: *mut pg_sys::Node,
) -> Option<(*mut pg_sys::Node, *mut pg_sys::Node, bool)> {
    let text_eq = pg_sys::Oid::from(pg_sys::TextEqualOperator);
    let deterministic = |coll: pg_sys::Oid| {
        coll == pg_sys::InvalidOid || pg_sys::get_collation_isdeterministic(coll)
    };
    if is_a(conjunct, pg_sys::NodeTag::T_OpExpr) {
        let op = &*conjunct.cast::<pg_sys::OpExpr>();
        if op.opno != text_eq || cells(op.args).len() != 2 || !deterministic(op.inputcollid) {
            return None;
        }
        return Some((nth(op.args, 0), nth(op.args, 1), false));
    }
    if is_a(conjunct, pg_sys::NodeTag::T_ScalarArrayOpExpr) {
        let op = &*conjunct.cast::<pg_sys::ScalarArrayOpExpr>();
        if op.opno != text_eq
            || !op.useOr
            || cells(op.args).len() != 2
            || !deterministic(op.inputcollid)
        {
            return None;
        }
        return Some((nth(op.args, 0), nth(op.args, 1), true));
    }
    None
}

/// Adds the implied conditions of the conjuncts of the AND list at `quals`. `may_push`:
/// the list is a WHERE clause or an inner join's ON, so a condition may also be moved
/// into a view's query.
unsafe fn rewrite_and_list(
    catalog: &Catalog,
    q: *mut pg_sys::Query,
    quals: *mut *mut pg_sys::Node,
    may_push: bool,
) {
    let current = *quals;
    if current.is_null() {
        return;
    }
    let conjuncts: Vec<*mut pg_sys::Node> = if is_a(current, pg_sys::NodeTag::T_BoolExpr)
        && (*current.cast::<pg_sys::BoolExpr>()).boolop == pg_sys::BoolExprType::AND_EXPR
    {
        cells((*current.cast::<pg_sys::BoolExpr>()).args)
            .iter()
            .map(|c| c.ptr_value.cast())
            .collect()
    } else {
        vec![current]
    };
    for conjunct in conjuncts {
        let Some((left, right, is_array)) = equality(conjunct) else {
            continue;
        };
        // `col = v` or, for `=` (not IN), `v = col`.
        let sides = if is_array {
            vec![(left, right)]
        } else {
            vec![(left, right), (right, left)]
        };
        for (decrypted, value) in sides {
            if !usable_value(value) {
                continue;
            }
            let Some(target) = resolve(catalog, q, decrypted) else {
                continue;
            };
            match target {
                Target::Here { rtindex, col } => {
                    if reads_relation(value, rtindex) {
                        continue;
                    }
                    if constrains(*quals, rtindex, col.bidx_attno) {
                        continue;
                    }
                    let bidx = bidx_var(rtindex, col.bidx_attno);
                    if let Some(cond) = implied_condition(catalog, q, bidx, &col, value, is_array) {
                        and_into(quals, cond);
                    }
                }
                Target::Inside {
                    rtindex,
                    subquery,
                    inner,
                } => {
                    if !row_dependent(value, std::ptr::null_mut()) {
                        // A lookup value: filter inside the view.
                        if may_push {
                            push_into(catalog, subquery, *inner, value, is_array);
                        }
                    } else if !reads_relation(value, rtindex) {
                        // A join value: compare with the view's blind-index column,
                        // which the view's query is made to return.
                        let target = Target::Inside {
                            rtindex,
                            subquery,
                            inner,
                        };
                        if let Some((bidx, col)) = expose(q, target) {
                            if let Some(cond) =
                                implied_condition(catalog, q, bidx, &col, value, is_array)
                            {
                                and_into(quals, cond);
                            }
                        }
                    }
                }
            }
            break;
        }
    }
}

/// Adds the implied condition inside the view query that reads the column.
unsafe fn push_into(
    catalog: &Catalog,
    q: *mut pg_sys::Query,
    target: Target,
    value: *mut pg_sys::Node,
    is_array: bool,
) {
    match target {
        Target::Here { rtindex, col } => {
            let quals = &mut (*(*q).jointree).quals;
            if constrains(*quals, rtindex, col.bidx_attno) {
                return;
            }
            let bidx = bidx_var(rtindex, col.bidx_attno);
            if let Some(cond) = implied_condition(catalog, q, bidx, &col, value, is_array) {
                and_into(quals, cond);
            }
        }
        Target::Inside {
            subquery, inner, ..
        } => push_into(catalog, subquery, *inner, value, is_array),
    }
}

/// Does the qual list already compare the blind-index column (a query that spells the
/// blind-index condition out itself, or a second comparison of the same column)? Then
/// nothing more is added.
unsafe fn constrains(
    quals: *mut pg_sys::Node,
    rtindex: pg_sys::Index,
    attno: pg_sys::AttrNumber,
) -> bool {
    !quals.is_null()
        && pg_sys::bms_is_member(
            i32::from(attno) - pg_sys::FirstLowInvalidHeapAttributeNumber,
            columns_read(quals, rtindex),
        )
}

/// The WHERE clause, and the ON clauses of joins (inner ones may push into views).
unsafe fn rewrite_query(q: *mut pg_sys::Query, catalog: &Catalog) {
    if !(*q).utilityStmt.is_null() || (*q).jointree.is_null() {
        return;
    }
    let jointree = (*q).jointree;
    rewrite_and_list(catalog, q, &mut (*jointree).quals, true);
    for cell in cells((*jointree).fromlist) {
        rewrite_joins(catalog, q, cell.ptr_value.cast(), true);
    }
}

unsafe fn rewrite_joins(
    catalog: &Catalog,
    q: *mut pg_sys::Query,
    node: *mut pg_sys::Node,
    inner_path: bool,
) {
    if is_a(node, pg_sys::NodeTag::T_JoinExpr) {
        let j = node.cast::<pg_sys::JoinExpr>();
        let inner = inner_path && (*j).jointype == pg_sys::JoinType::JOIN_INNER;
        rewrite_and_list(catalog, q, &mut (*j).quals, inner);
        rewrite_joins(catalog, q, (*j).larg, inner);
        rewrite_joins(catalog, q, (*j).rarg, inner);
    } else if is_a(node, pg_sys::NodeTag::T_FromExpr) {
        let f = node.cast::<pg_sys::FromExpr>();
        rewrite_and_list(catalog, q, &mut (*f).quals, inner_path);
        for cell in cells((*f).fromlist) {
            rewrite_joins(catalog, q, cell.ptr_value.cast(), inner_path);
        }
    }
}
