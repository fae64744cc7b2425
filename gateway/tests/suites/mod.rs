//! Test suites beyond the data plane, compiled into the one integration-test binary.

mod cli;
mod deadlines;
mod dockerfile;
mod failures;
mod hostile;
mod jwt;
mod microvm;
mod operator;
mod pools;
mod sandbox;
