//! The integration-test suites, by theme, compiled into the one integration-test binary.

mod build;
mod cli;
mod cluster;
mod deadlines;
mod dockerfile;
mod failures;
mod hibernate_hosts;
mod hostile;
mod hosts;
mod jwt;
mod lifecycle;
mod limits;
mod microvm;
mod operations;
mod operator;
mod pools;
mod protocols;
mod sandbox;
mod upgrade;
