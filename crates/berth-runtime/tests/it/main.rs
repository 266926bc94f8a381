//! berth-runtime integration tests: real replica processes (a small Python server), real sockets.

mod environment;
mod lifecycle;
mod stop;
mod support;
