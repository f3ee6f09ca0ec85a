//! `/status/page`: the cluster's shards as a page a person reads at a glance.
//!
//! One static HTML file (inline CSS and JavaScript) that polls `/status`
//! every 2 s and draws one cell per shard, coloured by its leader. All the
//! logic lives in the browser so the server side stays a constant: the page
//! costs nothing to serve and shows exactly what `/status` says, including
//! its 404 (cluster mode off) and 503 (Redis unreachable) answers.
//!
//! The page is served even outside cluster mode, so an operator who opens it
//! on the wrong instance is told why there is nothing to show rather than
//! getting a bare 404. It is open like `/status`: it only reads.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::IntoResponse;

/// The page itself, compiled into the binary so a deployment has no asset
/// directory to get wrong.
pub const STATUS_PAGE_HTML: &str = include_str!("status_page.html");

/// The browser may run this page's inline style and script and fetch from
/// redtail itself, and nothing else: the page works on an isolated network
/// and an injected member id could not load anything even if it escaped
/// the page's text-only rendering.
pub const STATUS_PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The response headers: HTML, never cached (an upgrade must show its new
/// page), locked down by [`STATUS_PAGE_CSP`].
fn headers() -> [(HeaderName, HeaderValue); 4] {
    [
        (
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(STATUS_PAGE_CSP),
        ),
        (
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
    ]
}

pub(super) async fn status_page() -> impl IntoResponse {
    (headers(), STATUS_PAGE_HTML)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[tokio::test]
    async fn serves_the_page_as_uncached_locked_down_html() {
        let response = status_page().await.into_response();
        assert_eq!(response.status(), StatusCode::OK);
        let cases = [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, STATUS_PAGE_CSP),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
        ];
        for (name, want) in cases {
            assert_eq!(
                response.headers().get(&name).and_then(|v| v.to_str().ok()),
                Some(want),
                "{name}"
            );
        }
    }

    #[test]
    fn the_policy_allows_only_inline_code_and_redtail_itself() {
        let directives: Vec<&str> = STATUS_PAGE_CSP.split("; ").collect();
        let cases = [
            "default-src 'none'",
            "connect-src 'self'",
            "script-src 'unsafe-inline'",
            "style-src 'unsafe-inline'",
        ];
        for want in cases {
            assert!(directives.contains(&want), "{want} in {STATUS_PAGE_CSP}");
        }
        assert!(!STATUS_PAGE_CSP.contains("http"), "{STATUS_PAGE_CSP}");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_polls_status() {
        // Anything that would make the browser fetch another resource.
        let forbidden = [
            "http://", "https://", "src=", "href=", "@import", "url(", "//cdn",
        ];
        for needle in forbidden {
            assert!(
                !STATUS_PAGE_HTML.contains(needle),
                "the page must be self-contained, found {needle:?}"
            );
        }
        assert!(STATUS_PAGE_HTML.contains("fetch(\"../status\""));
        assert!(STATUS_PAGE_HTML.contains("REFRESH_MS = 2000"));
    }
}
