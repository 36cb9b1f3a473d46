//! Idle confirmations: a scheduled cycle that finds no changed block commits
//! nothing (see `Replication::confirm_idle`), so the newest PIT of an idle
//! group grows old while the replica in fact holds every write. The primary
//! knows the instant up to which that holds; the partner monitor carries it
//! to the replica ([`wire::kinds::GROUP_CONFIRMED`], one request per partner
//! per probe, only when something changed), so that lag — one definition
//! for status, API and metrics at both sites — reads the same on each side.

use std::time::Duration;

use offsite_catalog::{Role, SyncState};

use crate::control::Done;
use crate::wire::Confirmed;
use crate::{RemoteError, ReplError, Replication};

impl Replication {
    /// Sends `partner` the confirmations of the groups this site is primary
    /// of with it that are newer than the last ones sent.
    pub(crate) async fn send_confirmed(&self, partner: &str) -> Result<(), ReplError> {
        let site = self.site.clone();
        let rows = crate::run_blocking(move || Ok(site.groups().all()?)).await?;
        let news: Vec<(String, String)> = {
            let sent = self
                .monitor
                .sent_confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            rows.iter()
                .filter(|g| g.role == Role::Primary && g.partner == partner)
                .filter_map(|g| {
                    let runner = self.runners.get(&g.name)?;
                    // A sync group in sync, or a continuous one streaming
                    // whose every write is acknowledged: the replica holds
                    // every write up to now.
                    let in_sync = runner
                        .mirror
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .is_some_and(|(m, resync)| match m.state_name(*resync) {
                            SyncState::InSync => true,
                            SyncState::Streaming => m.lag() == Some(Duration::ZERO),
                            _ => false,
                        });
                    let at = if in_sync {
                        offsite_catalog::now_rfc3339()
                    } else {
                        runner
                            .progress
                            .confirmed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone()?
                    };
                    (sent.get(&g.name) != Some(&at)).then(|| (g.name.clone(), at))
                })
                .collect()
        };
        if news.is_empty() {
            return Ok(());
        }
        let mut ch = self.channel(partner, None).await?;
        let answer = ch
            .call(&Confirmed {
                groups: news.clone(),
            })
            .await;
        ch.close().await;
        answer?;
        self.monitor
            .sent_confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(news);
        Ok(())
    }

    /// Records confirmations from `peer` for the groups it is the primary
    /// of here (others are ignored: a confirmation never outranks a role).
    pub(crate) async fn answer_confirmed(
        &self,
        peer: &str,
        c: Confirmed,
    ) -> Result<Done, RemoteError> {
        let site = self.site.clone();
        let rows = tokio::task::spawn_blocking(move || site.groups().all()).await??;
        let ours: std::collections::HashSet<&str> = rows
            .iter()
            .filter(|g| g.role == Role::Replica && g.partner == peer)
            .map(|g| g.name.as_str())
            .collect();
        for (group, at) in c.groups {
            if ours.contains(group.as_str()) {
                self.replica.confirm(group, at);
            }
        }
        Ok(Done)
    }
}
