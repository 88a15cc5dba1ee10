//! What reaches the service besides its environment: its secret variables as credentials
//! (`credentials`), for services that should not hold secrets in their environment, and the
//! copy of new ones into a running unit (`live`).

pub mod credentials;
pub mod live;
