//! What bootagent tells the load balancer and operators: the health report (`health`) and its
//! HTTP server (`health_server`) with `/metrics` (`metrics`), `bootagent doctor` (`doctor`) and
//! `bootagent env diff` (`envdiff`).

pub mod doctor;
pub(crate) mod envdiff;
pub mod health;
pub mod health_server;
mod metrics;
