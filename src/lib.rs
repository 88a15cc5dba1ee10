//! bootagent: from "just booted" to "the right service, on the right branch, with the right
//! secrets, running". `main.rs` only parses arguments and maps errors to exit codes.

mod atomic;
pub mod autoscaling;
mod aws;
mod boot;
pub mod cli;
pub mod config;
pub mod doctor;
mod ec2;
pub mod envfile;
mod error;
pub mod exit;
mod failpoint;
pub mod git;
pub mod health;
pub mod health_server;
pub mod history;
pub mod identity;
pub mod imds;
mod lifecycle;
pub mod logging;
mod names;
pub mod plan;
mod refresh;
mod remote;
mod retry;
pub mod secrets;
pub mod service;
pub mod status;
mod template;
#[cfg(test)]
mod testing;

pub use error::Error;
