//! Built-in presets (stub).
