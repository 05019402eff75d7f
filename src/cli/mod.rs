//! The operator CLI: `coppice import`, `coppice step ...`, `coppice templates` and
//! `coppice serve`.

pub mod args;
mod commands;
mod print;
mod serve;

pub use commands::run;
