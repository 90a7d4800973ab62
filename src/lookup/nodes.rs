//! Small helpers over PostgreSQL parse-tree nodes and lists.

use std::ffi::CStr;

use pgrx::pg_sys;

pub(super) unsafe fn is_a(node: *mut pg_sys::Node, tag: pg_sys::NodeTag) -> bool {
    !node.is_null() && (*node).type_ == tag
}

pub(super) unsafe fn cells<'a>(list: *mut pg_sys::List) -> &'a [pg_sys::ListCell] {
    if list.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts((*list).elements, (*list).length as usize)
    }
}

pub(super) unsafe fn nth<T>(list: *mut pg_sys::List, n: usize) -> *mut T {
    cells(list)
        .get(n)
        .map_or(std::ptr::null_mut(), |c| c.ptr_value.cast())
}

pub(super) unsafe fn strip_relabel(mut e: *mut pg_sys::Node) -> *mut pg_sys::Node {
    while is_a(e, pg_sys::NodeTag::T_RelabelType) {
        e = (*e.cast::<pg_sys::RelabelType>()).arg.cast();
    }
    e
}

pub(super) unsafe fn text_const(s: &CStr) -> *mut pg_sys::Node {
    let datum = pg_sys::Datum::from(pg_sys::cstring_to_text(s.as_ptr()));
    pg_sys::makeConst(
        pg_sys::TEXTOID,
        -1,
        pg_sys::DEFAULT_COLLATION_OID,
        -1,
        datum,
        false,
        false,
    )
    .cast()
}

/// ANDs `extra` into the qual list at `quals`.
pub(super) unsafe fn and_into(quals: *mut *mut pg_sys::Node, extra: *mut pg_sys::Node) {
    let current = *quals;
    if current.is_null() {
        *quals = extra;
    } else if is_a(current, pg_sys::NodeTag::T_BoolExpr)
        && (*current.cast::<pg_sys::BoolExpr>()).boolop == pg_sys::BoolExprType::AND_EXPR
    {
        let b = current.cast::<pg_sys::BoolExpr>();
        (*b).args = pg_sys::lappend((*b).args, extra.cast());
    } else {
        let list = pg_sys::lappend(
            pg_sys::lappend(std::ptr::null_mut(), current.cast()),
            extra.cast(),
        );
        *quals = pg_sys::make_andclause(list).cast();
    }
}

pub(super) unsafe fn bidx_var(
    rtindex: pg_sys::Index,
    attno: pg_sys::AttrNumber,
) -> *mut pg_sys::Var {
    pg_sys::makeVar(
        rtindex as _,
        attno,
        pg_sys::BYTEAOID,
        -1,
        pg_sys::InvalidOid,
        0,
    )
}
