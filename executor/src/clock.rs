//! The cell's clock for periodic work. Every round (advertisements, instance lists, route
//! registrations, metrics, the health probes of running instances) falls due on whole seconds
//! of one origin, so the rounds that fall in the same second run in one wake-up of the cell and
//! their messages leave in one write to the bus, instead of each at its own moment: however
//! many instances a cell runs, its periodic work falls due at most once a second.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The grid's step for periods of a second or more.
const STEP: Duration = Duration::from_secs(1);

/// The longest period taken (longer ones are cut to it): far enough for any timing.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// Ticks every `period` (1 ms to a year), the first about `period` from now: at the point of
/// the cell's grid nearest to it, whose step is a second for periods of a second or more and
/// the period itself for shorter ones. Periods of whole seconds (all the cell's defaults) thus
/// tick on whole seconds of one origin. A tick that comes late is skipped, not caught up, so
/// ticks stay on the grid.
pub(crate) fn every(period: Duration) -> Interval {
    let period = period.clamp(Duration::from_millis(1), LONGEST);
    let step = period.min(STEP);
    let mut ticks = tokio::time::interval_at(on_grid(Instant::now() + period, step), period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticks
}

/// `at`, rounded to the nearest multiple of `step` after the cell's origin (never before the
/// origin). Nearest, not up: a round that ran a moment after its tick is not put off by a
/// whole step.
fn on_grid(at: Instant, step: Duration) -> Instant {
    let origin = origin();
    origin + nearest_multiple(at.saturating_duration_since(origin), step)
}

/// The grid's origin: the first time the cell asked.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The multiple of `step` (not zero) nearest to `since`.
fn nearest_multiple(since: Duration, step: Duration) -> Duration {
    let step_ns = step.as_nanos().max(1);
    let steps = (since.as_nanos() + step_ns / 2) / step_ns;
    let ns = steps.max(1).saturating_mul(step_ns);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_to_the_nearest_step() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(nearest_multiple(ms(30_400), s(1)), s(30));
        assert_eq!(nearest_multiple(ms(30_600), s(1)), s(31));
        assert_eq!(nearest_multiple(ms(2_000), s(1)), s(2));
        assert_eq!(
            nearest_multiple(ms(100), s(1)),
            s(1),
            "never the origin itself"
        );
        assert_eq!(nearest_multiple(ms(740), ms(500)), ms(500));
    }

    #[test]
    fn instants_in_the_same_second_fall_on_one_tick() {
        let now = Instant::now();
        let a = on_grid(now + Duration::from_secs(30), STEP);
        let b = on_grid(now + Duration::from_millis(30_020), STEP);
        for t in [a, b] {
            assert_eq!(
                (t - origin()).subsec_nanos(),
                0,
                "a whole second from the origin"
            );
            let off = t.max(now + Duration::from_secs(30)) - t.min(now + Duration::from_secs(30));
            assert!(off <= Duration::from_millis(520), "{off:?} off");
        }
        // The same tick unless the 20 ms crossed a half second.
        let apart = a.max(b) - a.min(b);
        assert!(apart == Duration::ZERO || apart == STEP, "{apart:?} apart");
    }
}
