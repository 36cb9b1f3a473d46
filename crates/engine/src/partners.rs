//! Partners (pinned peer sites), authorization entries and the site-wide
//! replication settings: the trust configuration the replication listener
//! consults on every connection, so changes apply to the next connection
//! without a restart.

use std::path::Path;

use crate::model::{
    AddAuthz, AddPartner, AuthzEntry, PartnerInfo, SiteSettings, UpdateSiteSettings,
};
use offsite_catalog::PartnerRow;

use crate::authz::{self, Grant};
use crate::{EngineError, Site, names};

const ALLOW_ANY: &str = "allow_any_partner";
const DEFAULT_LOCATION: &str = "default_storage_location";
const BANDWIDTH: &str = "bandwidth_bytes_per_sec";

/// Normalizes a fingerprint as users paste it: `SHA256:` prefix optional,
/// hex in either case, with or without `:` separators.
pub fn normalize_fingerprint(fp: &str) -> Result<String, EngineError> {
    let body = fp.trim();
    let body = body
        .strip_prefix("SHA256:")
        .or_else(|| body.strip_prefix("sha256:"))
        .unwrap_or(body);
    let hex: String = body
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EngineError::Invalid(format!(
            "fingerprint {fp:?} is not a SHA-256 fingerprint; copy it from `offsite site show` on the partner (SHA256: followed by 64 hex digits)"
        )));
    }
    Ok(format!("SHA256:{hex}"))
}

/// Largest bandwidth limit, bytes/s: the catalog keeps integers as
/// SQLite's signed 64 bits, and the API document declares this maximum.
pub const MAX_BANDWIDTH: u64 = i64::MAX as u64;

/// Refuses a bandwidth limit beyond [`MAX_BANDWIDTH`].
pub fn check_bandwidth(bw: u64) -> Result<(), EngineError> {
    if bw > MAX_BANDWIDTH {
        return Err(EngineError::Invalid(format!(
            "bandwidth {bw} bytes/s is beyond the largest limit ({MAX_BANDWIDTH}); use 0 for no limit"
        )));
    }
    Ok(())
}

/// Checks HOST:PORT syntax without resolving the host.
fn validate_address(addr: &str) -> Result<(), EngineError> {
    let bad = || {
        EngineError::Invalid(format!(
            "address {addr:?} is not HOST:PORT; use the partner's replication listener as shown by its `offsite site show` (listen)"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(())
}

pub(crate) fn partner_info(row: PartnerRow) -> PartnerInfo {
    PartnerInfo {
        reachable: row.last_handshake_at.is_some() && row.last_error.is_none(),
        rtt_ms: row.last_rtt_micros.map(|us| us as f64 / 1000.0),
        name: row.name,
        address: row.address,
        fingerprint: row.fingerprint,
        created_at: row.created_at,
        last_handshake_at: row.last_handshake_at,
        last_error: row.last_error,
    }
}

/// Makes sure a storage location exists and the site can write there: a
/// directory is created and a file written and removed in it; for
/// `s3://BUCKET/PREFIX`, a test object is written, read back and deleted
/// under the prefix with the site's `[object_store]` settings.
fn check_storage_location(
    path: &str,
    settings: &offsite_objects::S3Settings,
    site_dir: &Path,
) -> Result<(), EngineError> {
    if path.contains("://") {
        let location = offsite_objects::StorageLocation::parse(path)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        return crate::objects::probe(&location, settings, site_dir);
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(EngineError::Invalid(format!(
            "storage location {path:?} is relative; give an absolute directory on this site's machine"
        )));
    }
    offsite_volume_file::create_private_dir_all(p).map_err(|e| {
        EngineError::Invalid(format!(
            "cannot create storage location {path}: {e}; pick a directory the site's user can write"
        ))
    })?;
    let probe = p.join(".offsite-write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            EngineError::Invalid(format!(
                "storage location {path} is not writable: {e}; pick a directory the site's user can write"
            ))
        })
}

impl Site {
    /// This site's certificate fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `partner add`.
    pub fn add_partner(&self, req: &AddPartner) -> Result<PartnerInfo, EngineError> {
        names::validate("partner", &req.name)?;
        validate_address(&req.address)?;
        let fingerprint = normalize_fingerprint(&req.fingerprint)?;
        if fingerprint == self.fingerprint {
            return Err(EngineError::Invalid(format!(
                "fingerprint {fingerprint} is this site's own; use the fingerprint shown by `offsite site show` on the partner"
            )));
        }
        if req.name == self.config().name {
            return Err(EngineError::Invalid(format!(
                "{:?} is this site's own name; a partner is another site",
                req.name
            )));
        }
        let row = self
            .catalog()
            .insert_partner(&req.name, &req.address, &fingerprint)?;
        self.event(
            "partner.added",
            Some(&req.name),
            &format!(
                "partner {} at {} pinned to {fingerprint}",
                req.name, req.address
            ),
        );
        Ok(partner_info(row))
    }

    /// `partner set --address`: the partner moved (or restarted on another
    /// port); its pinned identity stays.
    pub fn set_partner_address(
        &self,
        name: &str,
        address: &str,
    ) -> Result<PartnerInfo, EngineError> {
        validate_address(address)?;
        self.catalog().set_partner_address(name, address)?;
        self.event(
            "partner.address",
            Some(name),
            &format!("partner {name} now at {address}"),
        );
        self.partner(name)
    }

    /// `partner replace`: the partner site was rebuilt with a new identity
    /// (a new certificate, maybe a new address) under the same name. Only
    /// the pin changes here; what the groups and plans that name the
    /// partner need next is the replication service's part.
    pub fn replace_partner(
        &self,
        name: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<PartnerInfo, EngineError> {
        validate_address(address)?;
        let fingerprint = normalize_fingerprint(fingerprint)?;
        if fingerprint == self.fingerprint {
            return Err(EngineError::Invalid(format!(
                "fingerprint {fingerprint} is this site's own; use the fingerprint shown by `offsite site show` on the rebuilt partner"
            )));
        }
        let old = self.catalog().partner(name)?;
        let row = self
            .catalog()
            .replace_partner(name, address, &fingerprint)?;
        self.event(
            "partner.replaced",
            Some(name),
            &format!(
                "partner {name} re-pinned from {} to {fingerprint} at {address} (a rebuilt site)",
                old.fingerprint
            ),
        );
        Ok(partner_info(row))
    }

    /// `partner list`.
    pub fn partners(&self) -> Result<Vec<PartnerInfo>, EngineError> {
        // Read by every status page and monitor round: not behind writers.
        Ok(self
            .catalog_reader()
            .partners()?
            .into_iter()
            .map(partner_info)
            .collect())
    }

    /// One partner.
    pub fn partner(&self, name: &str) -> Result<PartnerInfo, EngineError> {
        Ok(partner_info(self.catalog().partner(name)?))
    }

    /// `partner remove`: the fingerprint is unpinned, so the partner's next
    /// connection is refused. Refused while a replication group uses the
    /// partner.
    pub fn remove_partner(&self, name: &str) -> Result<(), EngineError> {
        let groups: Vec<String> = self
            .groups()
            .all()?
            .into_iter()
            .filter(|g| g.partner == name)
            .map(|g| g.name)
            .collect();
        if !groups.is_empty() {
            return Err(EngineError::Invalid(format!(
                "partner {name} is used by replication group(s) {}; tear them down before removing the partner",
                groups.join(", ")
            )));
        }
        self.catalog().delete_partner(name)?;
        self.event(
            "partner.removed",
            Some(name),
            &format!("partner {name} unpinned"),
        );
        Ok(())
    }

    /// The partner pinned to `fingerprint`, if any (the replication
    /// listener's trust decision).
    pub fn partner_by_fingerprint(&self, fingerprint: &str) -> Option<PartnerInfo> {
        self.catalog()
            .partners()
            .ok()?
            .into_iter()
            .find(|p| p.fingerprint == fingerprint)
            .map(partner_info)
    }

    /// Records the outcome of contacting a partner (handshake RTT or error).
    pub fn record_partner_contact(&self, name: &str, result: Result<u64, &str>) {
        if let Err(e) = self.catalog().record_partner_contact(name, result) {
            tracing::warn!(partner = name, error = %e, "recording partner contact");
        }
    }

    /// `authz add`.
    pub fn add_authz(&self, req: &AddAuthz) -> Result<AuthzEntry, EngineError> {
        authz::validate_pattern(&req.allowed_primary)?;
        if let Some(tag) = &req.security_tag
            && (tag.is_empty() || tag.len() > 256)
        {
            return Err(EngineError::Invalid(
                "a security tag is 1-256 characters".into(),
            ));
        }
        check_storage_location(
            &req.storage_location,
            &self.config().object_store,
            self.layout.root(),
        )?;
        let row = self.catalog().insert_authz(
            &req.allowed_primary,
            &req.storage_location,
            req.security_tag.as_deref(),
        )?;
        self.event(
            "authz.added",
            Some(&req.allowed_primary),
            &format!(
                "primaries matching {:?} may replicate to {}{}",
                req.allowed_primary,
                req.storage_location,
                req.security_tag
                    .as_ref()
                    .map_or(String::new(), |t| format!(" with security tag {t:?}"))
            ),
        );
        Ok(AuthzEntry {
            allowed_primary: row.pattern,
            storage_location: row.storage_location,
            security_tag: row.security_tag,
            created_at: row.created_at,
        })
    }

    /// `authz list`.
    pub fn authz_entries(&self) -> Result<Vec<AuthzEntry>, EngineError> {
        Ok(self
            .catalog()
            .authz_entries()?
            .into_iter()
            .map(|r| AuthzEntry {
                allowed_primary: r.pattern,
                storage_location: r.storage_location,
                security_tag: r.security_tag,
                created_at: r.created_at,
            })
            .collect())
    }

    /// `authz remove`.
    pub fn remove_authz(&self, pattern: &str) -> Result<(), EngineError> {
        self.catalog().delete_authz(pattern)?;
        self.event(
            "authz.removed",
            Some(pattern),
            &format!("authorization entry {pattern:?} removed"),
        );
        Ok(())
    }

    /// Site-wide replication settings.
    pub fn settings(&self) -> Result<SiteSettings, EngineError> {
        let c = self.catalog();
        Ok(SiteSettings {
            allow_any_partner: c.setting(ALLOW_ANY)?.as_deref() == Some("true"),
            default_storage_location: c
                .setting(DEFAULT_LOCATION)?
                .unwrap_or_else(|| self.layout.root().join("replicas").display().to_string()),
            bandwidth_bytes_per_sec: c
                .setting(BANDWIDTH)?
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0),
        })
    }

    /// `site set`.
    pub fn update_settings(&self, u: &UpdateSiteSettings) -> Result<SiteSettings, EngineError> {
        if let Some(loc) = &u.default_storage_location {
            check_storage_location(loc, &self.config().object_store, self.layout.root())?;
        }
        if let Some(bw) = u.bandwidth_bytes_per_sec {
            check_bandwidth(bw)?;
        }
        {
            let c = self.catalog();
            if let Some(v) = u.allow_any_partner {
                c.set_setting(ALLOW_ANY, if v { "true" } else { "false" })?;
            }
            if let Some(loc) = &u.default_storage_location {
                c.set_setting(DEFAULT_LOCATION, loc)?;
            }
            if let Some(bw) = u.bandwidth_bytes_per_sec {
                c.set_setting(BANDWIDTH, &bw.to_string())?;
            }
        }
        let s = self.settings()?;
        self.event(
            "site.settings",
            Some(&self.config().name),
            &format!(
                "allow-any-partner {}, default storage location {}, bandwidth {}",
                s.allow_any_partner,
                s.default_storage_location,
                s.bandwidth_bytes_per_sec
                    .map_or("unlimited".into(), |b| format!("{b} B/s"))
            ),
        );
        Ok(s)
    }

    /// Decides, as a replica site, whether `primary` presenting `tag` may
    /// replicate here. The error names the rule and what to change.
    pub fn authorize_primary(
        &self,
        primary: &str,
        tag: Option<&str>,
    ) -> Result<Grant, authz::AuthzError> {
        // Two statements: the catalog guard of the first must be released
        // before `settings()` takes the catalog again.
        let entries = self.catalog().authz_entries();
        let entries = entries.map_err(|e| authz::AuthzError::Entries {
            site: self.config().name.clone(),
            source: Box::new(e),
        })?;
        let settings = self.settings().map_err(|e| authz::AuthzError::Settings {
            site: self.config().name.clone(),
            source: Box::new(e),
        })?;
        let grant = authz::authorize(
            &self.config().name,
            &entries,
            settings.allow_any_partner,
            &settings.default_storage_location,
            primary,
            tag,
        );
        match &grant {
            Ok(g) => {
                if g.rule == "allow-any-partner" {
                    check_storage_location(
                        &g.storage_location,
                        &self.config().object_store,
                        self.layout.root(),
                    )
                    .map_err(|e| authz::AuthzError::StorageLocation(Box::new(e)))?;
                }
                self.event(
                    "authz.granted",
                    Some(primary),
                    &format!(
                        "primary {primary} authorized by {} to {}",
                        g.rule, g.storage_location
                    ),
                );
            }
            Err(reason) => self.event("authz.refused", Some(primary), &reason.to_string()),
        }
        grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalize() {
        let hex = "ab".repeat(32);
        let want = format!("SHA256:{hex}");
        assert_eq!(normalize_fingerprint(&want).unwrap(), want);
        assert_eq!(normalize_fingerprint(&hex.to_uppercase()).unwrap(), want);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(normalize_fingerprint(&colons.join(":")).unwrap(), want);
        assert!(normalize_fingerprint("SHA256:abc").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn addresses() {
        validate_address("127.0.0.1:7800").unwrap();
        validate_address("site-b.example.com:7800").unwrap();
        validate_address("[::1]:7800").unwrap();
        for bad in ["x", "x:", ":80", "x:0", "x:99999"] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }
}
