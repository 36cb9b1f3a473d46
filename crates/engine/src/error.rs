//! Errors of the site engine. Each variant's message says what failed and
//! what to do; [`EngineError::kind`] classifies them for the API's status codes.

use std::path::{Path, PathBuf};

/// Coarse classes of engine errors, mapped to HTTP status codes by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something named does not exist (404).
    NotFound,
    /// A name is taken or the object is in the wrong state (409).
    Conflict,
    /// The request is malformed or out of range (400).
    Invalid,
    /// The object is in use (409).
    Busy,
    /// The site failed internally (500).
    Internal,
}

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The directory is not a site's data directory.
    #[error("{} is not an offsite data directory (no config.toml); create one with `offsite site init --dir {} --name NAME`", dir.display(), dir.display())]
    NotASite {
        /// The directory.
        dir: PathBuf,
    },
    /// `site init` on a directory that already holds a site or other files.
    #[error("{} already holds {what}; pick an empty or new directory", dir.display())]
    DirNotEmpty {
        /// The directory.
        dir: PathBuf,
        /// What was found.
        what: String,
    },
    /// `config.toml` is malformed.
    #[error("bad configuration {}: {reason}; fix the file", path.display())]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Bad input from a user.
    #[error("{0}")]
    Invalid(String),
    /// No such volume.
    #[error("no volume named {0:?}; `offsite volume list` shows the volumes")]
    NoSuchVolume(String),
    /// Something else named by the user does not exist (a PIT of a
    /// group, ...); the message names it and the command that lists them.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken, or the object is in a state that does not allow
    /// the request now; the message says what to do.
    #[error("{0}")]
    Conflict(String),
    /// Duplicate volume name.
    #[error("a volume named {0:?} already exists; pick another name or delete it first")]
    VolumeExists(String),
    /// The volume is in use.
    #[error("volume {name:?} is in use ({why}); {what_to_do}")]
    Busy {
        /// Volume name.
        name: String,
        /// Why it is busy.
        why: String,
        /// What the user should do.
        what_to_do: &'static str,
    },
    /// The request is well formed but refused in the object's current
    /// state; the message says why and what to do (409).
    #[error("{0}")]
    Refused(String),
    /// A VM is held by a replication group or a recovery plan.
    #[error("VM {name:?} is in {why}; {what_to_do}")]
    VmInUse {
        /// VM name.
        name: String,
        /// What holds it.
        why: String,
        /// What the user should do.
        what_to_do: String,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] offsite_catalog::CatalogError),
    /// The volume store failed.
    #[error(transparent)]
    Store(#[from] offsite_volume_file::StoreError),
    /// Changed-block tracking failed.
    #[error(transparent)]
    Cbt(#[from] offsite_cbt::CbtError),
    /// Generating the site's TLS identity failed.
    #[error("generating the site's TLS certificate: {0}")]
    Tls(String),
    /// The API listener's certificate could not be loaded or made.
    #[error(transparent)]
    ApiTls(#[from] crate::api_tls::ApiTlsError),
    /// Another file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> EngineError {
        EngineError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use offsite_catalog::CatalogError as C;
        match self {
            EngineError::NoSuchVolume(_)
            | EngineError::NotFound(_)
            | EngineError::Catalog(
                C::NoSuchVolume(_)
                | C::NoSuchVm(_)
                | C::NoSuchGroup(_)
                | C::NoSuchPartner(_)
                | C::NoSuchAuthz(_)
                | C::NoSuchPlan(_)
                | C::NoSuchRun(_),
            ) => ErrorKind::NotFound,
            EngineError::VolumeExists(_)
            | EngineError::Catalog(
                C::VolumeExists(_)
                | C::VmExists(_)
                | C::GroupExists(_)
                | C::FailoverExists(..)
                | C::PartnerExists(_)
                | C::AuthzExists(_)
                | C::GroupState { .. },
            )
            | EngineError::Conflict(_)
            | EngineError::DirNotEmpty { .. } => ErrorKind::Conflict,
            EngineError::Invalid(_)
            | EngineError::NotASite { .. }
            | EngineError::ApiTls(
                crate::api_tls::ApiTlsError::Read { .. }
                | crate::api_tls::ApiTlsError::NoCertificate { .. }
                | crate::api_tls::ApiTlsError::NoKey { .. }
                | crate::api_tls::ApiTlsError::Mismatch { .. },
            )
            | EngineError::Store(
                offsite_volume_file::StoreError::TooLarge { .. }
                | offsite_volume_file::StoreError::NotImportable { .. },
            ) => ErrorKind::Invalid,
            EngineError::Busy { .. } | EngineError::VmInUse { .. } => ErrorKind::Busy,
            EngineError::Refused(_) => ErrorKind::Conflict,
            _ => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use offsite_catalog::CatalogError as C;

    use super::{EngineError, ErrorKind};

    /// Unknown names are "not found" and taken names "conflict", whatever
    /// the object: the API turns them into 404 and 409, never 500.
    #[test]
    fn user_errors_are_never_internal() {
        let s = || "x".to_string();
        for e in [
            EngineError::NoSuchVolume(s()),
            EngineError::NotFound(s()),
            C::NoSuchVolume(s()).into(),
            C::NoSuchVm(s()).into(),
            C::NoSuchGroup(s()).into(),
            C::NoSuchPartner(s()).into(),
            C::NoSuchAuthz(s()).into(),
            C::NoSuchPlan(s()).into(),
            C::NoSuchRun(s()).into(),
        ] {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        }
        for e in [
            EngineError::VolumeExists(s()),
            EngineError::Conflict(s()),
            C::VolumeExists(s()).into(),
            C::VmExists(s()).into(),
            C::GroupExists(s()).into(),
            C::FailoverExists(s(), s()).into(),
            C::PartnerExists(s()).into(),
            C::AuthzExists(s()).into(),
            C::GroupState {
                group: s(),
                source: offsite_catalog::TransitionError::Illegal {
                    from: offsite_catalog::GroupState::Paused,
                    to: offsite_catalog::GroupState::FailedOverElsewhere,
                },
            }
            .into(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        }
    }
}
