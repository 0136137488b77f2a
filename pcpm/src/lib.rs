//! Pause-container pool manager (PCPM).
//!
//! Keeps pause containers whose network is already created and connected; a cold-started
//! function container joins one (`--network container:<id>`) and hands it back on teardown
//! (`shared/papers/004_…`, the PCPM design).
//!
//! Built so far: the pause process itself (`src/bin/pause.rs`, binary `pcpm-pause`), which
//! `runtimes/build.sh` links statically into the image `whisk-pcpm/pause:latest` (FROM scratch,
//! 1.2 MB): PID 1 of its container, it reaps the zombies handed to it and exits 0 on SIGTERM or
//! SIGINT, as the Kubernetes pause container does. The pool itself comes next (issue 5).
