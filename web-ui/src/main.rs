//! The browser app (Leptos CSR); filled in by the app issue.
fn main() {}
