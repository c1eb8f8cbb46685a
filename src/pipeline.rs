//! Pipeline wiring (stub).
