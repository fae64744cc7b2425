//! Test suites beyond the data plane, compiled into the one integration-test binary.

mod cli;
mod dockerfile;
mod jwt;
mod microvm;
mod pools;
mod sandbox;
