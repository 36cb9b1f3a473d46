//! Authorization entries: which primaries may put replicas on this site,
//! where they go, and which security tag they must present — Hyper-V
//! Replica's `VMReplicationAuthorizationEntry`, keyed by site name instead of
//! Kerberos host name.
//!
//! Matching: an exact pattern beats every wildcard; among wildcards
//! (`*.suffix`) the longest suffix wins; `*` matches everything and loses to
//! all others. A name matching no entry is refused unless the site allows
//! replication from any (paired, authenticated) partner, which then uses the
//! site's default storage location. A matching entry with a security tag
//! refuses a primary presenting another tag (or none); the refusal names the
//! rule so the administrator knows which entry to fix.

use offsite_catalog::AuthzRow;

use crate::EngineError;

/// Why and where a primary is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Directory for the primary's replicas.
    pub storage_location: String,
    /// The rule that matched: `authz entry "PATTERN"` or `allow-any-partner`.
    pub rule: String,
}

/// Checks that `pattern` is an exact site name, `*.suffix` or `*`.
pub fn validate_pattern(pattern: &str) -> Result<(), EngineError> {
    if pattern == "*" {
        return Ok(());
    }
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    crate::names::validate("site", name).map_err(|_| {
        EngineError::Invalid(format!(
            "invalid --allowed-primary {pattern:?}: use an exact site name, `*.suffix` (e.g. *.example.com) or `*`"
        ))
    })
}

/// How specific a pattern's match of `primary` is (higher wins), or `None`.
fn specificity(pattern: &str, primary: &str) -> Option<usize> {
    if pattern == primary {
        return Some(usize::MAX);
    }
    if pattern == "*" {
        return Some(0);
    }
    let suffix = pattern.strip_prefix('*')?;
    (suffix.starts_with('.') && primary.len() > suffix.len() && primary.ends_with(suffix))
        .then_some(suffix.len())
}

/// Why a primary may not replicate to this site, or why the site could not
/// decide. Each message names the rule and what to change.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The matching entry requires another security tag.
    #[error(
        "site {site} refuses primary {primary}: authorization entry {pattern:?} requires security tag {required:?}, the group presents {}; create the group with --security-tag {required} or change the entry on {site}",
        presented.as_ref().map_or("none".to_string(), |t| format!("{t:?}"))
    )]
    TagMismatch {
        /// This site.
        site: String,
        /// The primary asking.
        primary: String,
        /// The entry that matched.
        pattern: String,
        /// The tag it requires.
        required: String,
        /// The tag the group presents, if any.
        presented: Option<String>,
    },
    /// No entry matches and allow-any-partner is off.
    #[error(
        "site {site} refuses primary {primary}: no authorization entry matches {primary:?} and allow-any-partner is off; on {site} run `offsite authz add --allowed-primary {primary} --storage-location DIR` (or `offsite site set --allow-any-partner true`)"
    )]
    NoEntry {
        /// This site.
        site: String,
        /// The primary asking.
        primary: String,
    },
    /// The authorization entries could not be read: nothing was decided.
    #[error("site {site} cannot read its authorization entries: {source}")]
    Entries {
        /// This site.
        site: String,
        /// What the catalog said.
        #[source]
        source: Box<offsite_catalog::CatalogError>,
    },
    /// The site's settings could not be read: nothing was decided.
    #[error("site {site} cannot read its settings: {source}")]
    Settings {
        /// This site.
        site: String,
        /// What failed.
        #[source]
        source: Box<EngineError>,
    },
    /// allow-any-partner admits the primary, but the default storage
    /// location is unusable.
    #[error(transparent)]
    StorageLocation(Box<EngineError>),
}

impl AuthzError {
    /// Whether the site refused (as opposed to failing to decide).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            AuthzError::TagMismatch { .. } | AuthzError::NoEntry { .. }
        )
    }
}

/// Decides whether `primary` presenting `tag` may replicate here.
pub fn authorize(
    site: &str,
    entries: &[AuthzRow],
    allow_any: bool,
    default_location: &str,
    primary: &str,
    tag: Option<&str>,
) -> Result<Grant, AuthzError> {
    let best = entries
        .iter()
        .filter_map(|e| specificity(&e.pattern, primary).map(|s| (s, e)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, e)| e);
    match best {
        Some(entry) => {
            if let Some(required) = &entry.security_tag
                && tag != Some(required.as_str())
            {
                return Err(AuthzError::TagMismatch {
                    site: site.to_string(),
                    primary: primary.to_string(),
                    pattern: entry.pattern.clone(),
                    required: required.clone(),
                    presented: tag.map(str::to_string),
                });
            }
            Ok(Grant {
                storage_location: entry.storage_location.clone(),
                rule: format!("authz entry {:?}", entry.pattern),
            })
        }
        None if allow_any => Ok(Grant {
            storage_location: default_location.to_string(),
            rule: "allow-any-partner".into(),
        }),
        None => Err(AuthzError::NoEntry {
            site: site.to_string(),
            primary: primary.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pattern: &str, loc: &str, tag: Option<&str>) -> AuthzRow {
        AuthzRow {
            pattern: pattern.into(),
            storage_location: loc.into(),
            security_tag: tag.map(Into::into),
            created_at: String::new(),
        }
    }

    #[test]
    fn most_specific_entry_wins() {
        let entries = [
            entry("*", "/any", None),
            entry("*.example.com", "/example", None),
            entry("*.dc1.example.com", "/dc1", None),
            entry("db.dc1.example.com", "/db", None),
        ];
        let at = |p| authorize("r", &entries, false, "/def", p, None).map(|g| g.storage_location);
        assert_eq!(at("db.dc1.example.com").unwrap(), "/db");
        assert_eq!(at("web.dc1.example.com").unwrap(), "/dc1");
        assert_eq!(at("web.dc2.example.com").unwrap(), "/example");
        assert_eq!(at("example.com").unwrap(), "/any");
        assert_eq!(at("other").unwrap(), "/any");
    }

    #[test]
    fn wildcard_does_not_match_bare_suffix_or_partial_label() {
        let entries = [entry("*.example.com", "/e", None)];
        assert!(authorize("r", &entries, false, "/d", "a.example.com", None).is_ok());
        assert!(authorize("r", &entries, false, "/d", "example.com", None).is_err());
        assert!(authorize("r", &entries, false, "/d", "badexample.com", None).is_err());
    }

    #[test]
    fn security_tag_is_enforced_and_named() {
        let entries = [entry("*.example.com", "/e", Some("gold"))];
        let err =
            authorize("r", &entries, false, "/d", "a.example.com", Some("silver")).unwrap_err();
        assert!(
            matches!(&err, AuthzError::TagMismatch { required, presented: Some(p), .. } if required == "gold" && p == "silver"),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("\"*.example.com\"") && text.contains("gold") && text.contains("silver"),
            "{text}"
        );
        let err = authorize("r", &entries, false, "/d", "a.example.com", None).unwrap_err();
        assert!(err.to_string().contains("presents none"), "{err}");
        let g = authorize("r", &entries, false, "/d", "a.example.com", Some("gold")).unwrap();
        assert_eq!(g.rule, "authz entry \"*.example.com\"");
    }

    #[test]
    fn no_entry_refused_unless_allow_any() {
        let err = authorize("r", &[], false, "/d", "a", None).unwrap_err();
        assert!(matches!(err, AuthzError::NoEntry { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("no authorization entry") && text.contains("authz add"),
            "{text}"
        );
        let g = authorize("r", &[], true, "/d", "a", Some("t")).unwrap();
        assert_eq!(
            g,
            Grant {
                storage_location: "/d".into(),
                rule: "allow-any-partner".into()
            }
        );
        // An entry still wins over allow-any, tag included.
        let entries = [entry("a", "/a", Some("x"))];
        assert!(authorize("r", &entries, true, "/d", "a", None).is_err());
    }

    #[test]
    fn patterns_are_validated() {
        for good in ["*", "*.example.com", "site-b"] {
            validate_pattern(good).unwrap();
        }
        for bad in ["", "**", "*example.com", "a b", "*."] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }
}
