//! Names of sites and volumes: they appear in NBD URLs, file names of
//! events and TLS certificates, so they are restricted to a safe alphabet.

use crate::EngineError;

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is 1–64 characters of `[A-Za-z0-9._-]` starting with a
/// letter or digit.
pub fn validate(what: &str, name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "invalid {what} name {name:?}: use 1-{MAX_NAME_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        for good in ["a", "vm1-disk0", "db.example.com", "A_b"] {
            super::validate("volume", good).unwrap();
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(super::validate("volume", bad).is_err(), "{bad:?}");
        }
    }
}
