//! File source (stub).
