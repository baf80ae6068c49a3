//! End-to-end tests live in `tests/`: the controller, a stager, NATS and real containers
//! together, as a user of the platform sees them. This library is empty.
