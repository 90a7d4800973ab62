//! Tamper alerts: the worker runs `dscsa.alert_command` (a superuser setting) once at the
//! start of each burst of tamper detections, with a JSON description on stdin (database,
//! context, key id, record sequence number; never plaintext or ciphertext). A burst ends
//! after `dscsa.alert_interval` seconds without a detection; the next burst's alert says
//! how many detections the previous one had. The command runs detached from the failing
//! backends (they never wait for it) and is killed if it runs longer than 30 seconds.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dscsa_core::audit::record::Event;

use crate::guc;

const COMMAND_TIME_LIMIT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Alerts {
    last_detection: Option<Instant>,
    /// Detections in the current burst.
    burst: u64,
    /// Detections of the previous burst (reported with the next alert).
    previous_burst: u64,
    children: Vec<(Child, Instant)>,
}

impl Alerts {
    /// Called after the records are committed.
    pub fn on_tampers(&mut self, tampers: &[(i64, Event)]) {
        let Some((seq, first)) = tampers.first() else {
            return;
        };
        let now = Instant::now();
        let interval = Duration::from_secs(guc::ALERT_INTERVAL_S.get().max(1) as u64);
        let new_burst = self
            .last_detection
            .is_none_or(|t| now.duration_since(t) >= interval);
        if new_burst {
            self.previous_burst = self.burst;
            self.burst = 0;
        }
        self.burst += tampers.len() as u64;
        self.last_detection = Some(now);
        if new_burst {
            let payload = serde_json::json!({
                "event": "tamper",
                "seq": seq,
                "origin": first.origin,
                "database": first.database,
                "operation": first.operation,
                "key_id": first.key_id,
                "field_kind": first.field_kind,
                "context": first.context,
                "detections_in_batch": tampers.len(),
                "previous_burst_detections": self.previous_burst,
            });
            self.run_command(&payload.to_string());
        }
    }

    fn run_command(&mut self, payload: &str) {
        let command = guc::ALERT_COMMAND
            .get()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        if command.trim().is_empty() {
            return;
        }
        match Command::new("/bin/sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(payload.as_bytes());
                    let _ = stdin.write_all(b"\n");
                }
                self.children.push((child, Instant::now()));
            }
            Err(e) => pgrx::warning!("pg_dscsa: dscsa.alert_command could not be started: {e}"),
        }
    }

    /// Collects finished alert commands and kills overdue ones (never waits).
    pub fn reap(&mut self) {
        self.children
            .retain_mut(|(child, started)| match child.try_wait() {
                Ok(Some(_)) | Err(_) => false,
                Ok(None) if started.elapsed() > COMMAND_TIME_LIMIT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    pgrx::warning!(
                        "pg_dscsa: dscsa.alert_command ran longer than 30 s and was killed"
                    );
                    false
                }
                Ok(None) => true,
            });
    }
}
