//! How secrets reach the service besides its environment: `files`, the `[[files]]` entries
//! rendered from the secrets and written with their owner, group and mode.

pub mod files;
#[cfg(test)]
mod tests;
