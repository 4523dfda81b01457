//! Kernel tests: one test binary, one module per area. Every test that loads
//! eBPF programs runs in its own network namespace; run them one at a time
//! (`cargo xtask test` passes --test-threads=1).

mod containers;
mod doctor;
mod fleet;
mod history;
mod live;
mod netns;
mod pools;
mod privilege;
mod trace;
mod who;
