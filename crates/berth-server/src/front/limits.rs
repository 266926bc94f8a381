//! What the listener allows its clients: how many connections, and how long each may take.

use std::time::Duration;

use crate::config::ServerConfig;

/// File descriptors kept for everything but client connections (the store, the listener,
/// replica processes and their pipes, the runtime).
const FD_RESERVE: u64 = 128;
/// The default cap never goes above this (about 10 KiB of memory each while idle).
const MAX_DEFAULT_CONNECTIONS: u64 = 16_384;
/// Nor below this, however low the descriptor limit.
const MIN_DEFAULT_CONNECTIONS: u64 = 16;

/// The listener's limits on its clients. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open client connections at most; at the cap, new connections wait in the kernel's accept
    /// queue until one closes.
    pub max_connections: usize,
    /// Longest time without a request under way (before the first byte, between requests).
    pub idle: Duration,
    /// From the first byte of a request to the end of its body.
    pub request: Duration,
    /// Longest time one write may wait for the client to read.
    pub write: Duration,
    /// Idle time before TCP keepalive probes.
    pub keepalive: Duration,
    /// On shutdown, how long requests under way may take before their connections are closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_config(&ServerConfig::default())
    }
}

impl Limits {
    /// The limits a `[server]` section sets.
    pub fn from_config(c: &ServerConfig) -> Self {
        let secs = Duration::from_secs_f64;
        Self {
            max_connections: c.max_connections.unwrap_or_else(default_max_connections),
            idle: secs(c.idle_timeout_secs),
            request: secs(c.request_timeout_secs),
            write: secs(c.write_timeout_secs),
            keepalive: secs(c.tcp_keepalive_secs),
            shutdown_grace: secs(c.shutdown_grace_secs),
        }
    }
}

/// The default connection cap: half of the file descriptors above a reserve (a proxied call
/// holds a second descriptor, to the replica), between 16 and 16384.
pub fn default_max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let n = (soft.saturating_sub(FD_RESERVE) / 2)
        .clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Raises the soft file-descriptor limit to the hard one (what Go and many servers do at
/// start-up): the soft default of 1024 is a relic of `select(2)`, which berth does not use.
/// Returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}
