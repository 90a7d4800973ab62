//! The implied condition: which compared values qualify, and the candidates expression.

use std::ffi::{c_void, CStr};

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::*;

/// Does `node` mention anything that is not the same for every row of every query level
/// (columns, non-external parameters, sublinks, aggregates)? Such a value can still be
/// compared in the query it appears in, but not moved into a view's query.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn row_dependent(
    node: *mut pg_sys::Node,
    _ctx: *mut c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    use pg_sys::NodeTag::*;
    match (*node).type_ {
        T_Var | T_PlaceHolderVar | T_SubLink | T_Aggref | T_WindowFunc | T_GroupingFunc
        | T_CurrentOfExpr => true,
        T_Param => (*node.cast::<pg_sys::Param>()).paramkind != pg_sys::ParamKind::PARAM_EXTERN,
        _ => pg_sys::expression_tree_walker(node, Some(row_dependent), std::ptr::null_mut()),
    }
}

/// A value the candidates function can be given: no volatile function, no sublink, no
/// aggregate, one row.
pub(super) unsafe fn usable_value(value: *mut pg_sys::Node) -> bool {
    !pg_sys::contain_volatile_functions(value)
        && !pg_sys::contain_agg_clause(value)
        && !pg_sys::contain_window_function(value)
        && !pg_sys::expression_returns_set(value)
        && !contains_sublink(value)
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn sublink_walker(
    node: *mut pg_sys::Node,
    _ctx: *mut c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    if is_a(node, pg_sys::NodeTag::T_SubLink) {
        return true;
    }
    pg_sys::expression_tree_walker(node, Some(sublink_walker), std::ptr::null_mut())
}

pub(super) unsafe fn contains_sublink(node: *mut pg_sys::Node) -> bool {
    sublink_walker(node, std::ptr::null_mut())
}

/// `bidx = ANY (dscsa.blind_index_candidates(value, key, kind))` or its slot spellings
/// (below), `bidx` being the blind-index column of `col` as `q` sees it (the condition is
/// for `q`'s quals).
pub(super) unsafe fn implied_condition(
    catalog: &Catalog,
    q: *mut pg_sys::Query,
    bidx: *mut pg_sys::Var,
    col: &BlindIndexed,
    value: *mut pg_sys::Node,
    is_array: bool,
) -> Option<*mut pg_sys::Node> {
    let as_slots = spelled_as_slots(col, value, is_array);
    let function = if is_array {
        catalog.candidates_array_fn
    } else if as_slots {
        catalog.slot_fn
    } else {
        catalog.candidates_fn
    };
    // The slots are counted from the versions loaded: first follow any rotation made by
    // another session (which is also what invalidated the plan being made again).
    crate::keyring::sync_with_keyring();
    if !session_can_compute(catalog, &col.key, function) {
        return None;
    }
    let key = std::ffi::CString::new(col.key.as_str()).ok()?;
    // Parameters computed once per execution, for postgres_fdw to send: a lookup value
    // only (a join value changes per row, and postgres_fdw would not ship that anyway).
    let as_parameters =
        col.storage == Storage::Foreign && !row_dependent(value, std::ptr::null_mut());
    if as_parameters {
        // The planner turns sublinks into init plans only where the query says it has any.
        (*q).hasSubLinks = true;
    }
    let candidates: *mut pg_sys::Node = if as_slots {
        let mut slots = slots(catalog, value, &key, col.kind, as_parameters);
        if slots.len() == 1 {
            // One key version loaded (the usual case): a plain equality, which an index
            // scan takes as one scan key. An array of one would still go through
            // nbtree's array-key machinery: about 10 µs more per lookup, measured.
            let eq = pg_sys::make_opclause(
                pg_sys::Oid::from(pg_sys::ByteaEqualOperator),
                pg_sys::BOOLOID,
                false,
                bidx.cast(),
                slots.remove(0).cast(),
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
            );
            (*eq.cast::<pg_sys::OpExpr>()).opfuncid = catalog.bytea_eq_fn;
            return Some(eq.cast());
        }
        array_of(slots)
    } else {
        // A copy: a query tree does not share nodes between two places.
        let value = pg_sys::copyObjectImpl(value.cast()).cast::<pg_sys::Node>();
        let mut args = std::ptr::null_mut();
        for a in [value, text_const(&key), text_const(col.kind)] {
            args = pg_sys::lappend(args, a.cast());
        }
        let call = pg_sys::makeFuncExpr(
            function,
            pg_sys::BYTEAARRAYOID,
            args,
            pg_sys::InvalidOid,
            pg_sys::DEFAULT_COLLATION_OID,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        )
        .cast();
        if as_parameters {
            init_plan(call)
        } else {
            call
        }
    };
    let saop =
        pgrx::PgBox::<pg_sys::ScalarArrayOpExpr>::alloc_node(pg_sys::NodeTag::T_ScalarArrayOpExpr)
            .into_pg();
    (*saop).opno = pg_sys::Oid::from(pg_sys::ByteaEqualOperator);
    (*saop).opfuncid = catalog.bytea_eq_fn;
    (*saop).useOr = true;
    (*saop).inputcollid = pg_sys::InvalidOid;
    (*saop).args = pg_sys::lappend(
        pg_sys::lappend(std::ptr::null_mut(), bidx.cast()),
        candidates.cast(),
    );
    (*saop).location = -1;
    Some(saop.cast())
}

/// A lookup's candidates are spelled as slots (below), a join's as one function call
/// per outer row (four slots would compute them four times).
unsafe fn spelled_as_slots(col: &BlindIndexed, value: *mut pg_sys::Node, is_array: bool) -> bool {
    !is_array && (col.storage != Storage::Local || !row_dependent(value, std::ptr::null_mut()))
}

/// `(SELECT expr)`: an uncorrelated scalar sublink, which the planner makes an init plan
/// whose result is a parameter (`$0`) of the rest of the plan. Computed once per execution
/// like a STABLE call, but a parameter is something postgres_fdw ships to the remote
/// server (`bidx = ANY (ARRAY[$1::bytea, $2::bytea])`), and run-time partition pruning
/// can still use it.
unsafe fn init_plan(expr: *mut pg_sys::Node) -> *mut pg_sys::Node {
    let select = pgrx::PgBox::<pg_sys::Query>::alloc_node(pg_sys::NodeTag::T_Query).into_pg();
    (*select).commandType = pg_sys::CmdType::CMD_SELECT;
    (*select).querySource = pg_sys::QuerySource::QSRC_ORIGINAL;
    (*select).canSetTag = true;
    (*select).jointree = pg_sys::makeFromExpr(std::ptr::null_mut(), std::ptr::null_mut());
    let entry = pg_sys::makeTargetEntry(
        expr.cast(),
        1,
        pg_sys::pstrdup(c"candidate".as_ptr()),
        false,
    );
    (*select).targetList = pg_sys::lappend(std::ptr::null_mut(), entry.cast());
    let sublink = pgrx::PgBox::<pg_sys::SubLink>::alloc_node(pg_sys::NodeTag::T_SubLink).into_pg();
    (*sublink).subLinkType = pg_sys::SubLinkType::EXPR_SUBLINK;
    (*sublink).subselect = select.cast();
    (*sublink).location = -1;
    sublink.cast()
}

/// `ARRAY[dscsa._blind_index_slot(value, key, kind, 1, n), ...]`: the candidates as separate
/// STABLE expressions. Partition pruning evaluates each at executor start (it cannot look
/// inside one array-valued function), so that a lookup on a table hash-partitioned by the
/// blind-index column touches one partition per candidate. And the planner sees how many
/// there are (one per loaded version; one array-valued call counts as 10 in a generic
/// plan), so that a generic plan is the same index scan as a custom one: a prepared
/// lookup is planned once, not at every execution.
///
/// `as_parameters`: each slot an init plan (above), for foreign tables.
pub(super) unsafe fn slots(
    catalog: &Catalog,
    value: *mut pg_sys::Node,
    key: &CStr,
    kind: &CStr,
    as_parameters: bool,
) -> Vec<*mut pg_sys::Node> {
    let count = crate::blind::lookup_slot_count(&key.to_string_lossy(), &kind.to_string_lossy());
    slot_calls(
        catalog.slot_fn,
        &[value, text_const(key), text_const(kind)],
        count,
    )
    .into_iter()
    .map(|call| if as_parameters { init_plan(call) } else { call })
    .collect()
}

/// `function(args..., 1, count)`, ..., `function(args..., count, count)`: each call gets
/// its own copy of the arguments, its slot number and how many slots the plan has (the
/// slot refuses to run for more versions than that: a plan can outlive the load of a
/// version, as a cursor does).
pub(super) unsafe fn slot_calls(
    function: pg_sys::Oid,
    args: &[*mut pg_sys::Node],
    count: usize,
) -> Vec<*mut pg_sys::Node> {
    (1..=count)
        .map(|slot| {
            let mut list = std::ptr::null_mut();
            for &a in args {
                list = pg_sys::lappend(list, pg_sys::copyObjectImpl(a.cast()));
            }
            for number in [slot, count] {
                let int4 = pg_sys::makeConst(
                    pg_sys::INT4OID,
                    -1,
                    pg_sys::InvalidOid,
                    4,
                    pg_sys::Datum::from(number as i32),
                    false,
                    true,
                );
                list = pg_sys::lappend(list, int4.cast());
            }
            pg_sys::makeFuncExpr(
                function,
                pg_sys::BYTEAOID,
                list,
                pg_sys::InvalidOid,
                pg_sys::DEFAULT_COLLATION_OID,
                pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
            )
            .cast()
        })
        .collect()
}

/// `ARRAY[elements...]` of bytea.
pub(super) unsafe fn array_of(elements: Vec<*mut pg_sys::Node>) -> *mut pg_sys::Node {
    let mut list = std::ptr::null_mut();
    for e in elements {
        list = pg_sys::lappend(list, e.cast());
    }
    let array =
        pgrx::PgBox::<pg_sys::ArrayExpr>::alloc_node(pg_sys::NodeTag::T_ArrayExpr).into_pg();
    (*array).array_typeid = pg_sys::BYTEAARRAYOID;
    (*array).array_collid = pg_sys::InvalidOid;
    (*array).element_typeid = pg_sys::BYTEAOID;
    (*array).elements = list;
    (*array).multidims = false;
    (*array).location = -1;
    array.cast()
}
