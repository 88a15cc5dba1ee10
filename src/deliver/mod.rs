//! How secrets reach the service besides its environment: `credentials`, the secret variables
//! as credentials, for services that should not hold secrets in their environment; `live`, the
//! copy of new ones into a running unit; and `files`, the `[[files]]` entries rendered from the
//! secrets and written with their owner, group and mode.

pub mod credentials;
pub mod files;
pub mod live;
#[cfg(test)]
mod tests;
