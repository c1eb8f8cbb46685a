//! Parser engine (stub).
