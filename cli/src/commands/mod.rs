//! The commands that talk to the controller, one module per group.

pub mod admin;
pub mod app;
pub mod env;
pub mod images;
pub mod lifecycle;
pub mod login;
pub mod logs;
pub mod platform;
pub mod routes;
pub mod session;
pub mod ssh;
