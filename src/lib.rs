#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod audit;
pub mod auditor;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod http;
pub mod listener;
pub mod metric;
pub mod policy;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod vault;
