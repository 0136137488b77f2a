//! Pause-container pool manager (PCPM).
//!
//! Keeps pause containers whose network is already created and connected; a cold-started
//! function container joins one (`--network container:<id>`) and hands it back on teardown
//! (`shared/papers/004_…`, the PCPM design). The pool itself arrives with the pcpm issue; this
//! crate is its place in the workspace.
