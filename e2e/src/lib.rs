//! End-to-end tests live in `tests/`: the controller, a stager, NATS, cells and real
//! containers together, as a user of the platform sees them. The library holds what they and
//! the benchmarks (`bench/`) share: [`platform`] starts a whole platform in one process, with
//! cells in it or as `kiln-executor` processes, and cleans up after it.

pub mod deployed;
pub mod images;
pub mod kiln;
pub mod platform;
pub mod suite;
