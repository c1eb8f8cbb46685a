//! Conformance checker (stub).
