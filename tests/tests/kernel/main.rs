//! Kernel tests: one test binary, one module per area. Every test that loads
//! eBPF programs runs in its own network namespace; run them one at a time
//! (`cargo xtask test` passes --test-threads=1).

mod doctor;
mod history;
mod netns;
mod pools;
mod privilege;
mod trace;
mod who;
