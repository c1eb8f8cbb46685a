//! Helpers shared by the integration tests (`mod common;`).
#![allow(dead_code)]

pub mod agent;
pub mod arr;
pub mod e2e;
pub mod fhir_server;
