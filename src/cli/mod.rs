//! The operator CLI: `coppice import`, `coppice step ...`, `coppice templates` and
//! `coppice serve`.

pub mod args;
mod commands;
mod print;
mod serve;
mod signals;
mod state;

pub use commands::run;
