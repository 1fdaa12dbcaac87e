//! Who is asking: bearer tokens and client certificates signed by the server CA.

use cairn_api::user::Identity;
use std::collections::HashMap;

/// Bearer tokens the server accepts, each naming a user.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    by_secret: HashMap<String, Identity>,
}

impl Tokens {
    pub fn add(&mut self, secret: &str, user: &str, groups: &[&str]) {
        self.by_secret.insert(
            secret.to_string(),
            Identity {
                user: user.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            },
        );
    }

    /// The identity behind an `Authorization` header value, if it carries a known token.
    pub fn authenticate(&self, header: &str) -> Option<Identity> {
        let token = header.strip_prefix("Bearer ")?.trim();
        // Every token is compared, so the time taken does not tell how close a guess was.
        let mut found = None;
        for (secret, id) in &self.by_secret {
            if constant_time_eq(secret.as_bytes(), token.as_bytes()) {
                found = Some(id.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user (CN) and groups (O) of a client certificate the TLS layer already verified.
pub fn from_client_certificate(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(Identity { user, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut t = Tokens::default();
        t.add("s3cret", "admin", &["system:masters"]);
        assert_eq!(t.authenticate("Bearer s3cret").unwrap().user, "admin");
        assert!(t.authenticate("Bearer wrong").is_none());
        assert!(t.authenticate("Basic s3cret").is_none());
    }
}
