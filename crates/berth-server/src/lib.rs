//! berth HTTP server: axum wiring, routes, config, OpenAPI.
