//! App logs as the controller sees them: the lines on the bus (staging `STG` lines today),
//! the last [`RECENT`] of each app kept in memory, and a live feed for streams.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast;

/// Lines kept per app.
pub const RECENT: usize = 1000;

/// One log line of an app, tagged as in Cloud Foundry (`STG`, `APP/PROC/WEB/0`, ...).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AppLogLine {
    /// The app.
    pub app_guid: String,
    /// `STG`, `APP/PROC/WEB/0`, ...
    pub source: String,
    /// `OUT` or `ERR`.
    pub stream: String,
    /// The text.
    pub message: String,
    /// Nanoseconds since the epoch.
    pub timestamp_ns: u128,
}

/// Recent lines per app and the live feed.
pub struct Logs {
    recent: Mutex<HashMap<String, VecDeque<AppLogLine>>>,
    live: broadcast::Sender<AppLogLine>,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            recent: Mutex::default(),
            live: broadcast::channel(4096).0,
        }
    }
}

impl Logs {
    /// Records a line and hands it to live readers.
    pub fn push(&self, line: AppLogLine) {
        if let Ok(mut recent) = self.recent.lock() {
            let lines = recent.entry(line.app_guid.clone()).or_default();
            if lines.len() == RECENT {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
        let _ = self.live.send(line);
    }

    /// The recent lines of `app`, oldest first.
    pub fn recent(&self, app: &str) -> Vec<AppLogLine> {
        self.recent
            .lock()
            .map(|r| {
                r.get(app)
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Lines from now on (every app; readers filter).
    pub fn subscribe(&self) -> broadcast::Receiver<AppLogLine> {
        self.live.subscribe()
    }

    /// Feeds from the bus's staging log lines until the subscription ends.
    pub async fn follow_staging(&self, nats: async_nats::Client) -> anyhow::Result<()> {
        let mut lines = nats.subscribe(kiln_bus::STAGING_LOG_ALL).await?;
        while let Some(m) = lines.next().await {
            match kiln_bus::decode::<kiln_bus::StagingLogLine>(&m.subject, &m.payload) {
                Ok(l) => self.push(AppLogLine {
                    app_guid: l.app_guid,
                    source: l.source,
                    stream: l.stream,
                    message: l.line,
                    timestamp_ns: l.timestamp_ns,
                }),
                Err(e) => tracing::warn!(error = %e, "ignoring a log line"),
            }
        }
        Ok(())
    }
}
