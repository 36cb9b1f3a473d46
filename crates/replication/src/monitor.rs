//! The partner monitor: a session kept open to every partner, its
//! reachability and RTT recorded in the catalog each probe round, a
//! partner whose session ends made unreachable at once, and the idle
//! confirmations sent along (`confirm`). [`Replication`] holds the
//! monitor's state as a part ([`Monitor`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use offsite_transport::Session;

use crate::{ReplError, Replication};

/// The partner monitor's state.
#[derive(Default)]
pub(crate) struct Monitor {
    /// Sessions the monitor keeps open, by partner name.
    sessions: tokio::sync::Mutex<HashMap<String, Session>>,
    /// Primary side: what the monitor last sent as confirmed, by group, so
    /// that only news travels.
    pub(crate) sent_confirmed: std::sync::Mutex<HashMap<String, String>>,
    /// This site's console URL, as it tells partners.
    own_console: std::sync::Mutex<Option<String>>,
    /// Each partner's console URL, as it told the monitor when its session
    /// opened.
    consoles: std::sync::Mutex<HashMap<String, String>>,
}

impl Replication {
    /// Keeps a session open to every partner and records reachability and
    /// RTT in the catalog, until `shutdown` completes.
    ///
    /// The interval between rounds is `replication.probe_secs` of the
    /// configuration in force at each round, so a reload changes it.
    pub async fn monitor(self: Arc<Self>, shutdown: impl std::future::Future) {
        tokio::pin!(shutdown);
        'monitor: loop {
            self.probe_all().await;
            let interval = Duration::from_secs_f64(self.site.config().replication.probe_secs);
            let next_probe = tokio::time::sleep(interval);
            tokio::pin!(next_probe);
            // Between probes, a monitored session that ended (the partner
            // closed it, or its keepalive found the partner silent for
            // `dead_after`) makes the partner unreachable at once, not at
            // the next probe.
            loop {
                let watch = tokio::time::sleep(Duration::from_secs(1).min(interval));
                tokio::select! {
                    _ = &mut shutdown => break 'monitor,
                    _ = &mut next_probe => break,
                    _ = watch => {
                        self.reap_ended().await;
                        self.probe(true).await;
                    }
                }
            }
        }
        for (_, s) in self.monitor.sessions.lock().await.drain() {
            s.close().await;
        }
    }

    /// Records every partner whose monitored session ended as unreachable,
    /// with how it ended.
    async fn reap_ended(&self) {
        let ended: Vec<(String, Session)> = {
            let mut monitored = self.monitor.sessions.lock().await;
            let names: Vec<String> = monitored
                .iter()
                .filter(|(_, s)| s.is_finished())
                .map(|(n, _)| n.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| monitored.remove(&n).map(|s| (n, s)))
                .collect()
        };
        for (name, mut session) in ended {
            let why = match session.recv().await {
                Err(e) => format!("partner {name}: {e}"),
                Ok(_) => format!("partner {name} closed the monitoring session"),
            };
            tracing::warn!(partner = %name, "partner lost: {why}");
            let site = self.site.clone();
            crate::warn_if_failed(
                "recording the lost partner",
                tokio::task::spawn_blocking(move || {
                    site.record_partner_contact(&name, Err(why.as_str()))
                })
                .await,
            );
        }
    }

    async fn probe_all(&self) {
        self.probe(false).await;
    }

    /// Probes every partner, or with `unwatched_only` those that show as
    /// reachable but have no monitoring session yet (a partner just added,
    /// or reached by a `partner test` or a cycle): so that from then on its
    /// reachability follows the session, not the probe schedule.
    async fn probe(&self, unwatched_only: bool) {
        let site = self.site.clone();
        let partners = match tokio::task::spawn_blocking(move || site.partners()).await {
            Ok(Ok(p)) => p,
            _ => return,
        };
        let mut monitored = self.monitor.sessions.lock().await;
        monitored.retain(|name, _| partners.iter().any(|p| &p.name == name));
        for p in partners {
            if unwatched_only && (!p.reachable || monitored.contains_key(&p.name)) {
                continue;
            }
            let result =
                match monitored.remove(&p.name) {
                    Some(session) => match session.measure_rtt().await {
                        Ok(rtt) => {
                            monitored.insert(p.name.clone(), session);
                            Ok(rtt)
                        }
                        Err(e) => Err(ReplError::Transport {
                            partner: p.name.clone(),
                            source: e,
                        }),
                    },
                    None => match self.connect(&p.name, &self.session_options()).await {
                        Ok(session) => {
                            let rtt = session.measure_rtt().await.map_err(|source| {
                                ReplError::Transport {
                                    partner: p.name.clone(),
                                    source,
                                }
                            });
                            if rtt.is_ok() {
                                monitored.insert(p.name.clone(), session);
                                self.learn_console(&p.name, &p.address).await;
                            }
                            rtt
                        }
                        Err(e) => Err(e),
                    },
                };
            let site = self.site.clone();
            let name = p.name.clone();
            if result.is_ok()
                && let Err(e) = self.send_confirmed(&p.name).await
            {
                tracing::debug!(partner = %p.name, "sending idle confirmations: {e}");
            }
            let record = match result {
                Ok(rtt) => Ok(rtt.as_micros() as u64),
                Err(e) => Err(e.to_string()),
            };
            crate::warn_if_failed(
                "recording the partner's reachability",
                tokio::task::spawn_blocking(move || {
                    site.record_partner_contact(
                        &name,
                        record.as_ref().map(|v| *v).map_err(String::as_str),
                    )
                })
                .await,
            );
        }
    }

    /// Tells the monitor where this site's console is served (the daemon,
    /// once its API listener is bound): partners learn it by asking.
    pub fn set_console_url(&self, url: &str) {
        *self
            .monitor
            .own_console
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(url.to_string());
    }

    /// Where partner `name`'s console is, if it said so and its session is
    /// up.
    pub fn partner_console(&self, name: &str) -> Option<String> {
        self.monitor
            .consoles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Answers [`crate::wire::kinds::SITE_QUERY`].
    pub(crate) fn site_view(&self) -> crate::wire::SiteView {
        crate::wire::SiteView {
            name: self.site.config().name.clone(),
            console_url: self
                .monitor
                .own_console
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Asks partner `name` (at replication `address`) where its console
    /// is. A partner of an older version refuses the question: no link.
    async fn learn_console(&self, name: &str, address: &str) {
        let view = async {
            let mut ch = self.channel(name, None).await?;
            let r = ch.call(&crate::wire::SiteQuery {}).await;
            ch.close().await;
            r
        };
        let url = match view.await {
            Ok(v) => v.console_url.filter(|u| linkable(u, address)),
            Err(e) => {
                tracing::debug!(partner = %name, "asking for its console: {e}");
                None
            }
        };
        let mut consoles = self
            .monitor
            .consoles
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match url {
            Some(u) => consoles.insert(name.to_string(), u),
            None => consoles.remove(name),
        };
    }
}

/// Whether a partner's console URL is worth a link: a loopback console is
/// only reachable from the partner's own machine, which is this one when
/// the partner's replication address is loopback too (tests, the demo).
fn linkable(url: &str, partner_address: &str) -> bool {
    let loopback = |host: &str| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let url_host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host_of = |hp: &str| -> String {
        match hp.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
            _ => hp.to_string(),
        }
    };
    !loopback(&host_of(url_host)) || loopback(&host_of(partner_address))
}

#[cfg(test)]
mod tests {
    use super::linkable;

    #[test]
    fn a_loopback_console_is_linked_only_for_a_partner_on_this_machine() {
        assert!(linkable("http://127.0.0.1:8080", "127.0.0.1:7000"));
        assert!(linkable("https://[::1]:8080/", "[::1]:7000"));
        assert!(!linkable("http://127.0.0.1:8080", "10.0.0.2:7000"));
        assert!(linkable("https://dr.example.com:8443", "10.0.0.2:7000"));
        assert!(linkable("https://10.0.0.2:8443", "10.0.0.2:7000"));
        assert!(!linkable("http://localhost:8080", "dr.example.com:7000"));
    }
}
