//! berth-store's integration tests: the conformance suite on each SQLite flavour, and what is
//! specific to SQLite (files, pragmas, query plans, persistence).

mod conformance;
mod sqlite;
