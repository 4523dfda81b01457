//! One module per subcommand.

pub mod doctor;
pub mod reserve;
pub mod trace;
