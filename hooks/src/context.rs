//! What each wrapped key is bound to: the keyring's key id, key name and version (and
//! optionally a cluster label from the configuration), given to the KMS as associated
//! data (PKCS#11 GCM, transit) or encryption context (AWS KMS). A wrapped key copied into
//! another keyring row, or another cluster's keyring, does not unwrap there.

use dscsa_core::kms::Request;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub key_id: u32,
    pub key_name: String,
    pub key_version: u32,
    pub cluster: Option<String>,
}

impl Context {
    pub fn of(request: &Request, cluster: Option<&str>) -> Context {
        Context {
            key_id: request.key_id,
            key_name: request.key_name.clone(),
            key_version: request.key_version,
            cluster: cluster.map(str::to_string),
        }
    }

    /// Associated data: an unambiguous byte string (each value is length-prefixed).
    pub fn aad(&self) -> Vec<u8> {
        let mut out = b"pg_dscsa kek context v1\0".to_vec();
        for value in [
            self.key_id.to_string(),
            self.key_name.clone(),
            self.key_version.to_string(),
            self.cluster.clone().unwrap_or_default(),
        ] {
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// Encryption context pairs (AWS KMS): exact, case-sensitive, logged by CloudTrail
    /// (names and numbers only, never key material).
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("pg_dscsa:key-id".to_string(), self.key_id.to_string()),
            ("pg_dscsa:key-name".to_string(), self.key_name.clone()),
            (
                "pg_dscsa:key-version".to_string(),
                self.key_version.to_string(),
            ),
        ];
        if let Some(c) = &self.cluster {
            v.push(("pg_dscsa:cluster".to_string(), c.clone()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(id: u32, name: &str, version: u32) -> Context {
        Context {
            key_id: id,
            key_name: name.into(),
            key_version: version,
            cluster: None,
        }
    }

    #[test]
    fn every_field_changes_the_associated_data() {
        let base = ctx(3, "default", 1).aad();
        assert_ne!(base, ctx(4, "default", 1).aad());
        assert_ne!(base, ctx(3, "other", 1).aad());
        assert_ne!(base, ctx(3, "default", 2).aad());
        let mut clustered = ctx(3, "default", 1);
        clustered.cluster = Some("erp-prod".into());
        assert_ne!(base, clustered.aad());
        // Length prefixes: no two different contexts share an encoding.
        assert_ne!(ctx(12, "3", 1).aad(), ctx(1, "23", 1).aad());
    }
}
