//! API keys → tenants, and the namespace salt that keeps tenants' caches apart.
//!
//! The keys file has one `KEY TENANT [min_priority=N]` line per key (`#` starts a comment). Keys
//! are held only as BLAKE3 digests and looked up by digest, so neither memory dumps nor lookup
//! timing reveal them. A key's requests may ask for no better (lower) scheduling priority than
//! its `min_priority`, 0 unless the line says: with keys, jumping the queue is the operator's to
//! grant. Without a keys file every request belongs to the anonymous tenant (empty salt), which
//! may ask for any priority.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::RouterError;

/// Who a request belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tenant {
    /// The tenant part of the block namespace salt.
    pub name: Arc<str>,
    /// The best (lowest) scheduling priority its requests may ask for.
    pub min_priority: i32,
}

impl Tenant {
    pub fn anonymous() -> Self {
        Tenant { name: Arc::from(""), min_priority: i32::MIN }
    }

    /// A keyed tenant at the default `min_priority`, 0.
    pub fn named(name: &str) -> Self {
        Tenant { name: Arc::from(name), min_priority: 0 }
    }
}

/// The authenticator: `None` when the router runs without keys.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    keys: Option<HashMap<[u8; 32], Tenant>>,
}

impl Auth {
    /// Reads the keys file, when configured.
    pub fn load(path: Option<&Path>) -> Result<Self, RouterError> {
        let Some(path) = path else {
            return Ok(Auth::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|source| RouterError::ApiKeysRead { path: path.to_owned(), source })?;
        Auth::parse(&text).map_err(|(line, reason)| RouterError::ApiKeysParse { path: path.to_owned(), line, reason })
    }

    /// Parses the keys file; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut keys = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(key), Some(name), option, None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
                return Err((index + 1, "expected `KEY TENANT [min_priority=N]`".into()));
            };
            let mut tenant = Tenant::named(name);
            if let Some(option) = option {
                let value = option
                    .strip_prefix("min_priority=")
                    .ok_or_else(|| (index + 1, format!("unknown option {option:?}: expected `min_priority=N`")))?;
                tenant.min_priority =
                    value.parse().map_err(|e| (index + 1, format!("min_priority {value:?} is not an i32: {e}")))?;
            }
            if keys.insert(digest(key), tenant).is_some() {
                return Err((index + 1, "the key is listed twice".into()));
            }
        }
        if keys.is_empty() {
            return Err((0, "no keys: a keys file that admits nobody is a mistake".into()));
        }
        Ok(Auth { keys: Some(keys) })
    }

    /// The tenant of a request from its `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Tenant, RouterError> {
        let key = authorization
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        self.authenticate_key(key)
    }

    /// The tenant of a request from its bare key (Anthropic's clients send `x-api-key`).
    pub fn authenticate_key(&self, key: Option<&str>) -> Result<Tenant, RouterError> {
        let Some(keys) = &self.keys else {
            return Ok(Tenant::anonymous());
        };
        let key = key.ok_or(RouterError::Unauthenticated)?;
        keys.get(&digest(key.trim())).cloned().ok_or(RouterError::Unauthenticated)
    }
}

fn digest(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

/// The namespace salt a worker receives: tenant and request `cache_salt`, each length-prefixed so
/// that no two different pairs give the same bytes. The anonymous tenant without a cache salt
/// gets the empty salt, the one a worker called directly uses, so they share a cache.
pub(crate) fn namespace_salt(tenant: &Tenant, cache_salt: Option<&str>) -> Vec<u8> {
    let cache_salt = cache_salt.unwrap_or_default();
    if tenant.name.is_empty() && cache_salt.is_empty() {
        return Vec::new();
    }
    let mut salt = Vec::with_capacity(16 + tenant.name.len() + cache_salt.len());
    for part in [tenant.name.as_bytes(), cache_salt.as_bytes()] {
        salt.extend_from_slice(&(part.len() as u64).to_le_bytes());
        salt.extend_from_slice(part);
    }
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_tenants() {
        let auth =
            Auth::parse("# keys\nsk-a alice\n\nsk-b bob # second\nsk-c carol min_priority=-5\n").expect("parses");
        assert_eq!(auth.authenticate(Some("Bearer sk-a")).ok(), Some(Tenant::named("alice")));
        assert_eq!(auth.authenticate(Some("bearer sk-b")).ok(), Some(Tenant::named("bob")));
        assert_eq!(auth.authenticate_key(Some("sk-b")).ok(), Some(Tenant::named("bob")), "a bare key");
        let carol = Tenant { name: Arc::from("carol"), min_priority: -5 };
        assert_eq!(auth.authenticate_key(Some("sk-c")).ok(), Some(carol), "a key granted better priorities");
        assert!(matches!(auth.authenticate_key(None), Err(RouterError::Unauthenticated)));
        for bad in [None, Some("Bearer sk-d"), Some("sk-a"), Some("Basic sk-a")] {
            assert!(matches!(auth.authenticate(bad), Err(RouterError::Unauthenticated)), "{bad:?}");
        }
        assert_eq!(Auth::default().authenticate(None).ok(), Some(Tenant::anonymous()));
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(Auth::parse("k1 t1\nk2\n").err().map(|e| e.0), Some(2));
        assert_eq!(Auth::parse("k1 t1\nk1 t2\n").err().map(|e| e.0), Some(2));
        assert_eq!(Auth::parse("k1 t1 extra\n").err().map(|e| e.0), Some(1));
        assert_eq!(Auth::parse("k1 t1 min_priority=x\n").err().map(|e| e.0), Some(1));
        assert_eq!(Auth::parse("k1 t1 min_priority=1 extra\n").err().map(|e| e.0), Some(1));
        assert!(Auth::parse("# nothing\n").is_err());
    }

    #[test]
    fn salts_are_unambiguous() {
        let t = Tenant::named;
        assert!(namespace_salt(&Tenant::anonymous(), None).is_empty());
        assert_eq!(namespace_salt(&Tenant::anonymous(), Some("")), Vec::<u8>::new());
        assert_ne!(namespace_salt(&t("ab"), Some("c")), namespace_salt(&t("a"), Some("bc")));
        assert_ne!(namespace_salt(&t("a"), None), namespace_salt(&Tenant::anonymous(), Some("a")));
        assert_eq!(namespace_salt(&t("a"), None), namespace_salt(&t("a"), Some("")));
    }
}
