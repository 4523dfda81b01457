//! One module per subcommand.

pub mod trace;
#[cfg(target_os = "linux")]
pub mod who;
