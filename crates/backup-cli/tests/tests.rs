//! The integration tests of the `backup` binary: one test binary, one module
//! per subject, helpers in `util` (and shared fixtures in backup-testkit).
//!
//! The tests share this process but never its state: each runs the binary in
//! child processes, with its own temporary directory and an explicit
//! environment (no `set_var`, `set_current_dir` or umask changes here), and
//! the memory bound measures the peak RSS of its child, not of this process.

mod util;

mod hostile_images;
mod large_tree;
mod live_sqlite;
mod memory_bound;
mod ops_concurrency;
mod ops_daemon;
mod ops_keys;
mod ops_runs;
mod output_contract;
mod workflows;
