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
}
