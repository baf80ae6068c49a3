//! Crash restarts as in Diego: the first three crashes of an instance restart at once, then
//! after 30 s doubling up to 16 min; never after 200 crashes; the count starts over after five
//! minutes of healthy running.

use std::time::{Duration, Instant};

/// Crashes restarted without waiting.
pub const IMMEDIATE: u32 = 3;
/// The first wait after those.
pub const FIRST_WAIT: Duration = Duration::from_secs(30);
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(16 * 60);
/// After this many crashes the instance is left down.
pub const GIVE_UP_AFTER: u32 = 200;
/// Healthy running this long forgets the crashes.
pub const RESET_AFTER: Duration = Duration::from_secs(5 * 60);

/// The crash history of one instance index of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crashes {
    /// Crashes so far.
    pub count: u32,
    /// When the last one happened.
    pub last: Instant,
    /// What people are told about it.
    pub description: String,
}

impl Crashes {
    /// How long after the last crash a restart may happen; `None`: never again.
    pub fn wait(&self) -> Option<Duration> {
        match self.count {
            0..=IMMEDIATE => Some(Duration::ZERO),
            n if n > GIVE_UP_AFTER => None,
            n => {
                let doublings = (n - IMMEDIATE - 1).min(16);
                Some(FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT))
            }
        }
    }

    /// Whether a restart is due at `now`.
    pub fn restart_due(&self, now: Instant) -> bool {
        self.wait()
            .is_some_and(|w| now.saturating_duration_since(self.last) >= w)
    }

    /// When the next restart is due, if ever.
    pub fn next_restart(&self) -> Option<Instant> {
        self.wait().map(|w| self.last + w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(count: u32) -> Option<Duration> {
        Crashes {
            count,
            last: Instant::now(),
            description: String::new(),
        }
        .wait()
    }

    #[test]
    fn three_at_once_then_doubling_from_30_s_to_16_min_then_never() {
        assert_eq!(after(1), Some(Duration::ZERO));
        assert_eq!(after(3), Some(Duration::ZERO));
        assert_eq!(after(4), Some(Duration::from_secs(30)));
        assert_eq!(after(5), Some(Duration::from_secs(60)));
        assert_eq!(after(6), Some(Duration::from_secs(120)));
        assert_eq!(after(9), Some(Duration::from_secs(960)));
        assert_eq!(after(10), Some(MAX_WAIT));
        assert_eq!(after(200), Some(MAX_WAIT));
        assert_eq!(after(201), None);
    }

    #[test]
    fn a_restart_is_due_once_the_wait_is_over() {
        let c = Crashes {
            count: 4,
            last: Instant::now() - Duration::from_secs(31),
            description: String::new(),
        };
        assert!(c.restart_due(Instant::now()));
        let c = Crashes {
            last: Instant::now(),
            ..c
        };
        assert!(!c.restart_due(Instant::now()));
    }
}
