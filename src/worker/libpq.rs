//! The few libpq calls the standby's worker needs to hand its audit records to the
//! primary (libpq ships with PostgreSQL; postgres_fdw and dblink link it the same way).

use std::ffi::{c_char, c_int, c_void, CStr, CString};

#[link(name = "pq")]
extern "C" {
    fn PQconnectdb(conninfo: *const c_char) -> *mut c_void;
    fn PQstatus(conn: *const c_void) -> c_int;
    fn PQerrorMessage(conn: *const c_void) -> *const c_char;
    fn PQfinish(conn: *mut c_void);
    fn PQexecParams(
        conn: *mut c_void,
        command: *const c_char,
        n_params: c_int,
        param_types: *const u32,
        param_values: *const *const c_char,
        param_lengths: *const c_int,
        param_formats: *const c_int,
        result_format: c_int,
    ) -> *mut c_void;
    fn PQresultStatus(res: *const c_void) -> c_int;
    fn PQresultErrorMessage(res: *const c_void) -> *const c_char;
    fn PQclear(res: *mut c_void);
}

const CONNECTION_OK: c_int = 0;
const PGRES_COMMAND_OK: c_int = 1;
const PGRES_TUPLES_OK: c_int = 2;

/// A connection to the primary.
pub struct Connection(*mut c_void);

fn message(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libpq returns NUL-terminated messages that live as long as the object.
    unsafe { CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string()
}

impl Connection {
    /// Connects (blocking, bounded by `connect_timeout` in the connection string, which
    /// the worker adds when absent).
    pub fn connect(conninfo: &str) -> Result<Connection, String> {
        let info = CString::new(conninfo).map_err(|_| "connection string contains a NUL byte")?;
        // SAFETY: PQconnectdb copies what it needs from the string.
        let conn = unsafe { PQconnectdb(info.as_ptr()) };
        if conn.is_null() {
            return Err("out of memory".into());
        }
        // SAFETY: conn is a valid PGconn until PQfinish.
        if unsafe { PQstatus(conn) } != CONNECTION_OK {
            let e = message(unsafe { PQerrorMessage(conn) });
            unsafe { PQfinish(conn) };
            return Err(e);
        }
        Ok(Connection(conn))
    }

    /// Runs `sql` with one text parameter; Ok when the server accepted it.
    pub fn exec_with_text(&mut self, sql: &str, param: &str) -> Result<(), String> {
        let sql = CString::new(sql).map_err(|_| "NUL in SQL")?;
        let param = CString::new(param).map_err(|_| "NUL in parameter")?;
        let values = [param.as_ptr()];
        // SAFETY: one text parameter in text format; the result is cleared below.
        unsafe {
            let res = PQexecParams(
                self.0,
                sql.as_ptr(),
                1,
                std::ptr::null(),
                values.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
            );
            if res.is_null() {
                return Err(message(PQerrorMessage(self.0)));
            }
            let status = PQresultStatus(res);
            let result = if status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK {
                Ok(())
            } else {
                Err(message(PQresultErrorMessage(res)))
            };
            PQclear(res);
            result
        }
    }

    pub fn is_ok(&self) -> bool {
        // SAFETY: a valid PGconn.
        unsafe { PQstatus(self.0) == CONNECTION_OK }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: closes the connection once.
        unsafe { PQfinish(self.0) };
    }
}
