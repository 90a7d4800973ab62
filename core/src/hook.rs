//! Runs a KMS hook command with a deadline, without ever blocking the caller for longer
//! than one poll interval: the caller's `check_interrupts` runs between polls, so a
//! PostgreSQL backend still honours cancel requests and statement_timeout. On any exit
//! path (success, error, timeout, or an unwinding cancel) the hook's whole process group
//! is killed and reaped, so a hook that hangs or forks cannot outlive the call.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::kms::{sanitize, MAX_RESPONSE_LEN};

const POLL_INTERVAL_MS: i32 = 20;
const MAX_STDERR_LEN: usize = 4096;

/// Kills the hook's process group and reaps it unless it was already reaped.
struct ChildGuard {
    child: Child,
    reaped: bool,
}

impl ChildGuard {
    fn kill_group(&mut self) {
        // The child is the leader of its own process group (process_group(0)).
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_group();
        if !self.reaped {
            let _ = self.child.wait();
        }
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a pipe fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Reads what is available; returns true at end of file.
fn drain(reader: &mut impl Read, into: &mut Vec<u8>, limit: usize) -> Result<bool> {
    let mut buf = Zeroizing::new([0u8; 4096]);
    loop {
        match reader.read(&mut buf[..]) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                if into.len() + n > limit {
                    return Err(Error::Kms(format!("hook wrote more than {limit} bytes")));
                }
                into.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Kms(format!("reading hook output failed: {e}"))),
        }
    }
}

/// Runs `command` through `/bin/sh -c`, writes `input` to its stdin and returns its stdout
/// if it exits 0 within `timeout`. `check_interrupts` is called between polls; it may
/// unwind (PostgreSQL's ProcessInterrupts does), and the guard still kills the hook.
pub fn run(
    command: &str,
    input: &[u8],
    timeout: Duration,
    mut check_interrupts: impl FnMut(),
) -> Result<Zeroizing<Vec<u8>>> {
    if command.trim().is_empty() {
        return Err(Error::Kms("no KMS hook command is configured".into()));
    }
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("PG_DSCSA_KMS_PROTOCOL", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Kms(format!("could not start the hook: {e}")))?;
    let mut guard = ChildGuard {
        child,
        reaped: false,
    };
    let deadline = Instant::now() + timeout;

    // The request is far smaller than a pipe buffer, so this write cannot block. A hook
    // that exits without reading gives EPIPE, which is not an error by itself: its exit
    // status decides.
    if let Some(mut stdin) = guard.child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let mut stdout = guard
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::Kms("hook stdout was not captured".into()))?;
    let mut stderr = guard
        .child
        .stderr
        .take()
        .ok_or_else(|| Error::Kms("hook stderr was not captured".into()))?;
    set_nonblocking(stdout.as_raw_fd());
    set_nonblocking(stderr.as_raw_fd());

    // Full capacity up front: a growing Vec would leave unzeroed copies of key material
    // behind in the buffers it reallocates away from.
    let mut out = Zeroizing::new(Vec::with_capacity(MAX_RESPONSE_LEN));
    let mut err = Zeroizing::new(Vec::new());
    let (mut out_done, mut err_done) = (false, false);
    let status = loop {
        if !out_done {
            out_done = drain(&mut stdout, &mut out, MAX_RESPONSE_LEN)?;
        }
        if !err_done {
            err_done = drain(&mut stderr, &mut err, MAX_STDERR_LEN).unwrap_or(true);
        }
        if out_done && err_done {
            if let Some(status) = guard
                .child
                .try_wait()
                .map_err(|e| Error::Kms(format!("waiting for the hook failed: {e}")))?
            {
                guard.reaped = true;
                break status;
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Kms(format!(
                "hook did not finish within {} ms and was killed",
                timeout.as_millis()
            )));
        }
        check_interrupts();
        let mut fds = [
            libc::pollfd {
                fd: stdout.as_raw_fd(),
                events: if out_done { 0 } else { libc::POLLIN },
                revents: 0,
            },
            libc::pollfd {
                fd: stderr.as_raw_fd(),
                events: if err_done { 0 } else { libc::POLLIN },
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        unsafe {
            libc::poll(fds.as_mut_ptr(), 2, POLL_INTERVAL_MS);
        }
    };

    let stderr_text = String::from_utf8_lossy(&err);
    let why = sanitize(&stderr_text);
    if let Some(code) = status.code() {
        if code != 0 {
            return Err(Error::Kms(if why.is_empty() {
                format!("hook exited with status {code}")
            } else {
                format!("hook exited with status {code}: {why}")
            }));
        }
    } else if let Some(sig) = status.signal() {
        return Err(Error::Kms(format!("hook was killed by signal {sig}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sh(cmd: &str, timeout_ms: u64) -> Result<Zeroizing<Vec<u8>>> {
        run(cmd, b"hello\n", Duration::from_millis(timeout_ms), || {})
    }

    #[test]
    fn echoes_stdin() {
        let out = run_sh("cat", 5000).expect("cat works");
        assert_eq!(&out[..], b"hello\n");
    }

    #[test]
    fn nonzero_exit_reports_status_and_sanitized_stderr() {
        let err = run_sh("echo 'KEK not found' >&2; exit 3", 5000).unwrap_err();
        assert_eq!(
            err,
            Error::Kms("hook exited with status 3: KEK not found".into())
        );
        let err = run_sh("echo AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA >&2; exit 1", 5000).unwrap_err();
        assert_eq!(
            err,
            Error::Kms("hook exited with status 1: [redacted]".into())
        );
    }

    #[test]
    fn hang_is_killed_at_the_deadline() {
        let start = Instant::now();
        let err = run_sh("sleep 30", 300).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, Error::Kms(m) if m.contains("did not finish within 300 ms")));
    }

    #[test]
    fn background_grandchild_holding_stdout_is_killed_too() {
        let start = Instant::now();
        let err = run_sh("(sleep 30 &) ; echo partial", 300).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, Error::Kms(_)));
    }

    #[test]
    fn killed_by_signal() {
        let err = run_sh("kill -9 $$", 5000).unwrap_err();
        assert_eq!(err, Error::Kms("hook was killed by signal 9".into()));
    }

    #[test]
    fn missing_command_and_empty_command() {
        assert!(matches!(run_sh("", 1000), Err(Error::Kms(m)) if m.contains("no KMS hook")));
        assert!(matches!(
            run_sh("/nonexistent/hook", 5000),
            Err(Error::Kms(m)) if m.contains("status 127")
        ));
    }

    #[test]
    fn oversized_output_is_refused() {
        let err = run_sh("head -c 200000 /dev/zero", 5000).unwrap_err();
        assert!(matches!(err, Error::Kms(m) if m.contains("more than")));
    }

    #[test]
    fn interrupt_callback_can_abort_and_the_hook_dies() {
        let marker = std::env::temp_dir().join(format!("dscsa-hook-{}", std::process::id()));
        let cmd = format!("echo $$ > {}; sleep 30", marker.display());
        let mut calls = 0;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&cmd, b"", Duration::from_secs(30), || {
                calls += 1;
                if calls > 10 {
                    panic!("cancel");
                }
            })
        }));
        assert!(result.is_err(), "the cancel must propagate");
        let pid: i32 = std::fs::read_to_string(&marker)
            .expect("hook wrote its pid")
            .trim()
            .parse()
            .expect("pid");
        let _ = std::fs::remove_file(&marker);
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the hook must be killed when the caller unwinds");
    }
}
