//! BALP codes (stub).
