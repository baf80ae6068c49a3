//! The staging log: lines tagged `STG`, stdout and stderr kept apart, handed to the caller as
//! they are written.

use std::collections::VecDeque;
use std::sync::Arc;

/// The source tag of staging log lines (Cloud Foundry's `STG`).
pub const SOURCE: &str = "STG";

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (`OUT`).
    Out,
    /// Standard error (`ERR`).
    Err,
}

/// One line of the staging log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// stdout or stderr.
    pub stream: Stream,
    /// The text, without its newline.
    pub text: String,
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stream = match self.stream {
            Stream::Out => "OUT",
            Stream::Err => "ERR",
        };
        write!(f, "[{SOURCE}] {stream} {}", self.text)
    }
}

/// Receives every line as soon as it is written.
pub type LogSink = Arc<dyn Fn(&LogLine) + Send + Sync>;

/// A sink that drops every line.
pub fn discard() -> LogSink {
    Arc::new(|_| {})
}

/// The last lines of a step, for error messages.
#[derive(Debug, Default)]
pub(crate) struct TailBuffer {
    lines: VecDeque<String>,
}

/// How many lines a failure message shows.
pub(crate) const TAIL_LINES: usize = 15;

impl TailBuffer {
    pub(crate) fn push(&mut self, line: &str) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    pub(crate) fn take(&mut self) -> Vec<String> {
        self.lines.drain(..).collect()
    }
}
