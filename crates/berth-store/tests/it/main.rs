//! berth-store's integration tests: the conformance suite on each SQLite flavour and on
//! PostgreSQL, and what is specific to each (files, pragmas, query plans, persistence).

mod conformance;
mod postgres;
mod sqlite;
