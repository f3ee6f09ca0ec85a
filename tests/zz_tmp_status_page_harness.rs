//! TEMPORARY harness (helper for issue 5); deleted before the report.
#[path = "it/status_page.rs"]
mod status_page;
#[path = "it/support/mod.rs"]
mod support;
