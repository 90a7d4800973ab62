//! The hook's configuration: one file of `name = value` lines (`#` starts a comment),
//! named by the hook's only argument. It and every secret file it names must belong to
//! the user the hook runs as and be readable by nobody else (mode 0600 or 0400): a
//! secret that others can read is refused rather than used.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use zeroize::Zeroizing;

use crate::error::{Class, HookError};

pub struct Config {
    path: String,
    values: BTreeMap<String, String>,
}

fn config_error(message: String) -> HookError {
    HookError::new(Class::Config, message)
}

/// Refuses a file others could read or write, or that another user owns.
fn check_private(path: &str, what: &str) -> Result<(), HookError> {
    let meta = std::fs::metadata(path).map_err(|e| config_error(format!("{what} {path}: {e}")))?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Err(config_error(format!(
            "{what} {path} belongs to uid {}, not to the user the hook runs as (uid {uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(config_error(format!(
            "{what} {path} is readable or writable by others (mode {:o}): chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

impl Config {
    pub fn load(path: &str) -> Result<Config, HookError> {
        check_private(path, "configuration file")?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(format!("configuration file {path}: {e}")))?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Config, HookError> {
        let mut values = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(config_error(format!(
                    "{path} line {}: expected name = value",
                    n + 1
                )));
            };
            let value = value.trim().trim_matches('"').to_string();
            if values.insert(name.trim().to_string(), value).is_some() {
                return Err(config_error(format!(
                    "{path} line {}: {} given twice",
                    n + 1,
                    name.trim()
                )));
            }
        }
        Ok(Config {
            path: path.to_string(),
            values,
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, HookError> {
        self.get(name)
            .ok_or_else(|| config_error(format!("{} has no `{name} = ...`", self.path)))
    }

    /// A duration in milliseconds (`name = 5000`), or `default`.
    pub fn millis(&self, name: &str, default: u64) -> Result<u64, HookError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                config_error(format!(
                    "{}: {name} must be a number of milliseconds",
                    self.path
                ))
            }),
        }
    }

    /// The content of the secret file named by `name` (first line, trimmed), checked to
    /// be private like the configuration.
    pub fn secret(&self, name: &str) -> Result<Zeroizing<String>, HookError> {
        let path = self.require(name)?;
        check_private(path, name)?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| config_error(format!("{name} {path}: {e}")))?,
        );
        let first = text.lines().next().unwrap_or("").trim();
        if first.is_empty() {
            return Err(config_error(format!("{name} {path} is empty")));
        }
        Ok(Zeroizing::new(first.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_values_and_comments() {
        let c = Config::parse(
            "t",
            "# a comment\nmodule = /usr/lib/x.so\n\n kek = \"kek-1\" \n",
        )
        .expect("parse");
        assert_eq!(c.get("module"), Some("/usr/lib/x.so"));
        assert_eq!(c.get("kek"), Some("kek-1"));
        assert_eq!(c.get("missing"), None);
        assert!(c.require("missing").is_err());
        assert!(Config::parse("t", "no equals sign").is_err());
        assert!(Config::parse("t", "a = 1\na = 2").is_err());
    }

    #[test]
    fn refuses_files_others_can_read() {
        let dir = std::env::temp_dir().join(format!("dscsa_hooks_cfg_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("hook.conf");
        std::fs::write(&path, "kek = k\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let p = path.display().to_string();
        let err = Config::load(&p).err().expect("refused");
        assert!(err.line().contains("chmod 600"), "{}", err.line());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            Config::load(&p).expect("private file").get("kek"),
            Some("k")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
