//! The web console: static files under `crates/berth-server/console/`, compiled into the binary
//! and served at `/console`. A browser that opens `/` is sent there. The console is plain HTML,
//! CSS and JavaScript modules with no build step; everything it shows comes from the public API,
//! called with the user's key, so it can do nothing a key could not do with curl.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use berth_core::ErrorCode;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// One embedded file.
struct Asset {
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
}

macro_rules! assets {
    ($($name:literal => $ty:expr),* $(,)?) => {
        &[$(Asset { name: $name, bytes: include_bytes!(concat!("../console/", $name)), content_type: $ty }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "app.js" => JS,
    "api.js" => JS,
    "ui.js" => JS,
    "deployments.js" => JS,
    "deployment.js" => JS,
    "playground.js" => JS,
    "chart.js" => JS,
];

/// Strong validators, computed once: the files never change while berth runs.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.bytes);
            HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12])))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// Nothing from elsewhere: scripts, styles, images and calls only from berth itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console routes and the redirect of `/`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{*file}", get(file))
}

/// `/`: a browser (it asks for HTML) goes to the console; API clients keep the 404 envelope.
async fn root(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        Redirect::to("/console").into_response()
    } else {
        ApiError::new(ErrorCode::NotFound, "Not found!").into_response()
    }
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::new(ErrorCode::NotFound, "Not found!").into_response();
    };
    let asset = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let common = [
        // Revalidate every time (cheap: a 304), so a new berth's console is never mixed with an
        // old one's cached modules.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_nothing_comes_from_elsewhere() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.name);
            let text = String::from_utf8_lossy(a.bytes).replace("http://www.w3.org/2000/svg", "");
            for remote in ["http://", "https://", "//fonts.", "cdn"] {
                // Only the snippets the playground shows may name a URL, and they build it from
                // the page's own address.
                assert!(
                    !text.contains(remote) || a.name == "playground.js",
                    "{} mentions {remote}",
                    a.name
                );
            }
        }
        let index = String::from_utf8_lossy(ASSETS[0].bytes);
        for a in ASSETS
            .iter()
            .filter(|a| a.name.ends_with(".css") || a.name == "app.js")
        {
            assert!(
                index.contains(&format!("/console/{}", a.name)),
                "{}",
                a.name
            );
        }
    }
}
