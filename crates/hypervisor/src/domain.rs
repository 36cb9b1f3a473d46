//! A libvirt domain's XML as offsite reads and rewrites it.
//!
//! offsite keeps the protected site's definition verbatim (the text
//! libvirt gave it) and never re-serializes it: a recovery definition is
//! the original with edits spliced in at the byte ranges of the elements
//! and attributes they replace — the name, the UUID, each disk's source,
//! each network interface's network. So whatever offsite does not
//! understand (devices, CPU model, metadata) reaches the recovery site
//! untouched, and restoring the original at home is restoring the text.

use std::collections::BTreeMap;
use std::ops::Range;

/// Why a domain's XML cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DomainXmlError {
    /// Not well-formed XML.
    #[error("the domain XML is not well-formed: {0}; check `virsh dumpxml` of the domain")]
    Malformed(String),
    /// Well-formed but not what libvirt writes.
    #[error("the domain XML {0}; check `virsh dumpxml` of the domain")]
    Unexpected(String),
    /// A rewrite named a disk the domain does not have, or missed one.
    #[error("{0}")]
    Disks(String),
}

/// Where a disk of the domain reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// `<disk type='file'>`: an image file on the host.
    File(String),
    /// `<disk type='block'>`: a block device on the host.
    Block(String),
    /// `<disk type='network'>` with `protocol='nbd'`.
    Nbd(NbdSource),
    /// Anything else (another protocol, a volume of a libvirt pool); the
    /// text says what, for the error that refuses it.
    Other(String),
}

/// An NBD export as a libvirt disk source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdSource {
    /// Export name.
    pub export: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// One `<disk device='disk'>` of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// The guest's name for it (`<target dev=...>`: `vda`, `sdb`, ...).
    pub target: String,
    /// Where it lives on the host.
    pub source: DiskSource,
    /// Byte range of the `<disk>` element.
    range: Range<usize>,
    /// Byte ranges of the children kept when the source is replaced.
    kept: Vec<Range<usize>>,
}

/// An `<interface type='network'>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetworkRef {
    network: String,
    /// Byte range of the `network` attribute's value.
    value: Range<usize>,
}

/// What offsite reads from a domain's XML, with the positions it edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    xml: String,
    name: String,
    name_range: Range<usize>,
    uuid_range: Option<Range<usize>>,
    disks: Vec<DomainDisk>,
    networks: Vec<NetworkRef>,
}

/// How a recovery site defines the domain: its name there, whether it
/// keeps the UUID, the NBD export of every disk and the network of every
/// interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The domain's name at this site (`NAME` or `NAME-test`).
    pub name: String,
    /// Keep the original UUID (a failover: it is the same machine) or drop
    /// it so libvirt makes one (a test copy beside the original).
    pub keep_uuid: bool,
    /// Per disk target (`vda`, ...), the export it uses at this site.
    pub disks: BTreeMap<String, NbdSource>,
    /// Protected network name to this site's network; an interface whose
    /// network is not a key keeps its network.
    pub networks: BTreeMap<String, String>,
    /// Every interface on this network instead (a test's isolated network).
    pub all_networks: Option<String>,
}

/// Escapes text for an XML attribute value or element content.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(tag))
}

/// The range of an element's text content (empty, at the end of its start
/// tag, when it has none).
fn text_range(xml: &str, node: roxmltree::Node) -> Range<usize> {
    match node.first_child().filter(|c| c.is_text()) {
        Some(t) => t.range(),
        None => {
            let r = node.range();
            let start = xml[r.clone()].find('>').map_or(r.end, |i| r.start + i + 1);
            start..start
        }
    }
}

impl Domain {
    /// Reads a domain's XML (`virsh dumpxml`).
    pub fn parse(xml: &str) -> Result<Domain, DomainXmlError> {
        let doc = roxmltree::Document::parse(xml)
            .map_err(|e| DomainXmlError::Malformed(e.to_string()))?;
        let root = doc.root_element();
        if !root.has_tag_name("domain") {
            return Err(DomainXmlError::Unexpected(format!(
                "has <{}> at its root, not <domain>",
                root.tag_name().name()
            )));
        }
        let name_node = child(root, "name")
            .ok_or_else(|| DomainXmlError::Unexpected("has no <name>".into()))?;
        let name = name_node.text().unwrap_or("").trim().to_string();
        if name.is_empty() {
            return Err(DomainXmlError::Unexpected("has an empty <name>".into()));
        }
        let uuid_range = child(root, "uuid").map(|u| u.range());
        let mut disks = Vec::new();
        let mut networks = Vec::new();
        if let Some(devices) = child(root, "devices") {
            for d in devices.children().filter(|c| c.has_tag_name("disk")) {
                if d.attribute("device").unwrap_or("disk") != "disk" {
                    continue; // cdroms and floppies are not replicated
                }
                let target = child(d, "target")
                    .and_then(|t| t.attribute("dev"))
                    .ok_or_else(|| {
                        DomainXmlError::Unexpected("has a disk without <target dev=...>".into())
                    })?
                    .to_string();
                let src = child(d, "source");
                let attr = |a: &str| src.and_then(|s| s.attribute(a)).unwrap_or("").to_string();
                let source = match (
                    d.attribute("type").unwrap_or("file"),
                    attr("protocol").as_str(),
                ) {
                    ("file", _) => DiskSource::File(attr("file")),
                    ("block", _) => DiskSource::Block(attr("dev")),
                    ("network", "nbd") => {
                        let host = src.and_then(|s| child(s, "host"));
                        DiskSource::Nbd(NbdSource {
                            export: attr("name"),
                            host: host
                                .and_then(|h| h.attribute("name"))
                                .unwrap_or("localhost")
                                .to_string(),
                            port: host
                                .and_then(|h| h.attribute("port"))
                                .and_then(|p| p.parse().ok())
                                .unwrap_or(10809),
                        })
                    }
                    (kind, protocol) => DiskSource::Other(if protocol.is_empty() {
                        format!("type {kind}")
                    } else {
                        format!("type {kind}, protocol {protocol}")
                    }),
                };
                let kept = d
                    .children()
                    .filter(|c| {
                        c.is_element()
                            && !["driver", "source", "backingStore"].contains(&c.tag_name().name())
                    })
                    .map(|c| c.range())
                    .collect();
                disks.push(DomainDisk {
                    target,
                    source,
                    range: d.range(),
                    kept,
                });
            }
            for i in devices.children().filter(|c| c.has_tag_name("interface")) {
                if i.attribute("type") != Some("network") {
                    continue;
                }
                if let Some(attr) =
                    child(i, "source").and_then(|s| s.attributes().find(|a| a.name() == "network"))
                {
                    networks.push(NetworkRef {
                        network: attr.value().to_string(),
                        value: attr.range_value(),
                    });
                }
            }
        }
        Ok(Domain {
            name,
            name_range: text_range(xml, name_node),
            uuid_range,
            disks,
            networks,
            xml: xml.to_string(),
        })
    }

    /// The XML, verbatim.
    pub fn xml(&self) -> &str {
        &self.xml
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its disks (`device='disk'` only), in the order of the XML.
    pub fn disks(&self) -> &[DomainDisk] {
        &self.disks
    }

    /// The networks its interfaces use, each once, in order.
    pub fn networks(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in &self.networks {
            if !out.contains(&n.network) {
                out.push(n.network.clone());
            }
        }
        out
    }

    /// The domain as `how` defines it at a recovery site. Every disk must
    /// have an export in `how.disks`, and nothing else may be there.
    pub fn for_recovery(&self, how: &Recovery) -> Result<String, DomainXmlError> {
        for t in how.disks.keys() {
            if !self.disks.iter().any(|d| &d.target == t) {
                return Err(DomainXmlError::Disks(format!(
                    "domain {} has no disk {t}",
                    self.name
                )));
            }
        }
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        edits.push((self.name_range.clone(), escape(&how.name)));
        if let Some(r) = &self.uuid_range
            && !how.keep_uuid
        {
            edits.push((r.clone(), String::new()));
        }
        for d in &self.disks {
            let nbd = how.disks.get(&d.target).ok_or_else(|| {
                DomainXmlError::Disks(format!(
                    "disk {} of domain {} has no export at this site",
                    d.target, self.name
                ))
            })?;
            edits.push((d.range.clone(), self.nbd_disk(d, nbd)));
        }
        for n in &self.networks {
            let to = how
                .all_networks
                .as_ref()
                .or_else(|| how.networks.get(&n.network));
            if let Some(to) = to {
                edits.push((n.value.clone(), escape(to)));
            }
        }
        Ok(splice(&self.xml, edits))
    }

    /// The domain with every disk on the NBD export in `disks` (by
    /// target): how a protected domain is defined once offsite serves its
    /// disks. Name, UUID and networks are kept.
    pub fn with_nbd_disks(
        &self,
        disks: &BTreeMap<String, NbdSource>,
    ) -> Result<String, DomainXmlError> {
        self.for_recovery(&Recovery {
            name: self.name.clone(),
            keep_uuid: true,
            disks: disks.clone(),
            networks: BTreeMap::new(),
            all_networks: None,
        })
    }

    /// A `<disk>` element on `nbd` with the kept children of `d`.
    fn nbd_disk(&self, d: &DomainDisk, nbd: &NbdSource) -> String {
        let mut s = format!(
            "<disk type='network' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source protocol='nbd' name='{}'>\n        <host name='{}' port='{}'/>\n      </source>",
            escape(&nbd.export),
            escape(&nbd.host),
            nbd.port
        );
        for k in &d.kept {
            s.push_str("\n      ");
            s.push_str(&self.xml[k.clone()]);
        }
        s.push_str("\n    </disk>");
        s
    }
}

/// `text` with each range replaced (the ranges do not overlap).
fn splice(text: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = text.to_string();
    for (r, with) in edits {
        out.replace_range(r, &with);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu'>
  <name>web</name>
  <uuid>8d5a8a4e-3c57-4bd5-9d0e-0f2f3c1b1a11</uuid>
  <memory unit='KiB'>262144</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/web0.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='web1'>
        <host name='127.0.0.1' port='10809'/>
      </source>
      <target dev='vdb' bus='virtio'/>
      <serial>data &amp; logs</serial>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:00:00:01'/>
      <source network='prod'/>
    </interface>
    <interface type='network'>
      <source network='backup'/>
    </interface>
  </devices>
</domain>
"#;

    fn nbd(export: &str, port: u16) -> NbdSource {
        NbdSource {
            export: export.into(),
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn disks_and_networks_are_read() {
        let d = Domain::parse(XML).unwrap();
        assert_eq!(d.name(), "web");
        let disks: Vec<_> = d.disks().iter().map(|d| (&d.target, &d.source)).collect();
        assert_eq!(
            disks,
            [
                (
                    &"vda".to_string(),
                    &DiskSource::File("/var/lib/libvirt/images/web0.img".into())
                ),
                (&"vdb".to_string(), &DiskSource::Nbd(nbd("web1", 10809))),
            ]
        );
        assert_eq!(d.networks(), ["prod", "backup"]);
    }

    #[test]
    fn a_test_copy_is_renamed_without_uuid_on_the_test_network() {
        let d = Domain::parse(XML).unwrap();
        let xml = d
            .for_recovery(&Recovery {
                name: "web-test".into(),
                keep_uuid: false,
                disks: [
                    ("vda".into(), nbd("web0@g.test", 20000)),
                    ("vdb".into(), nbd("web1@g.test", 20000)),
                ]
                .into(),
                networks: [("prod".to_string(), "dr-prod".to_string())].into(),
                all_networks: Some("offsite-test-p".into()),
            })
            .unwrap();
        let back = Domain::parse(&xml).unwrap();
        assert_eq!(back.name(), "web-test");
        assert!(!xml.contains("<uuid>"), "{xml}");
        assert_eq!(back.networks(), ["offsite-test-p"]);
        let disks: Vec<_> = back
            .disks()
            .iter()
            .map(|d| (&d.target, &d.source))
            .collect();
        assert_eq!(
            disks,
            [
                (
                    &"vda".to_string(),
                    &DiskSource::Nbd(nbd("web0@g.test", 20000))
                ),
                (
                    &"vdb".to_string(),
                    &DiskSource::Nbd(nbd("web1@g.test", 20000))
                ),
            ]
        );
        // What offsite does not edit is kept verbatim.
        assert!(xml.contains("<serial>data &amp; logs</serial>"), "{xml}");
        assert!(xml.contains("<mac address='52:54:00:00:00:01'/>"), "{xml}");
        assert!(xml.contains("<disk type='file' device='cdrom'>"), "{xml}");
        assert!(xml.contains("<memory unit='KiB'>262144</memory>"), "{xml}");
    }

    #[test]
    fn a_failover_keeps_uuid_and_maps_networks() {
        let d = Domain::parse(XML).unwrap();
        let how = Recovery {
            name: "web".into(),
            keep_uuid: true,
            disks: [
                ("vda".into(), nbd("web0", 1)),
                ("vdb".into(), nbd("web1", 1)),
            ]
            .into(),
            networks: [("prod".to_string(), "dr-prod".to_string())].into(),
            all_networks: None,
        };
        let xml = d.for_recovery(&how).unwrap();
        let back = Domain::parse(&xml).unwrap();
        assert!(xml.contains("<uuid>8d5a8a4e-3c57-4bd5-9d0e-0f2f3c1b1a11</uuid>"));
        assert_eq!(back.networks(), ["dr-prod", "backup"]);
        let mut missing = how.clone();
        missing.disks.remove("vdb");
        let e = d.for_recovery(&missing).unwrap_err().to_string();
        assert!(e.contains("disk vdb of domain web has no export"), "{e}");
        let mut extra = how;
        extra.disks.insert("vdz".into(), nbd("x", 1));
        let e = d.for_recovery(&extra).unwrap_err().to_string();
        assert!(e.contains("has no disk vdz"), "{e}");
    }

    #[test]
    fn names_are_escaped_and_bad_xml_refused() {
        let d = Domain::parse(XML).unwrap();
        let xml = d
            .for_recovery(&Recovery {
                name: "a<b".into(),
                keep_uuid: true,
                disks: [("vda".into(), nbd("x&y", 1)), ("vdb".into(), nbd("z", 1))].into(),
                networks: BTreeMap::new(),
                all_networks: None,
            })
            .unwrap();
        assert!(xml.contains("<name>a&lt;b</name>") && xml.contains("name='x&amp;y'"));
        assert_eq!(Domain::parse(&xml).unwrap().name(), "a<b");
        assert!(matches!(
            Domain::parse("<domain><name>x</name>"),
            Err(DomainXmlError::Malformed(_))
        ));
        assert!(matches!(
            Domain::parse("<network><name>x</name></network>"),
            Err(DomainXmlError::Unexpected(_))
        ));
    }
}
