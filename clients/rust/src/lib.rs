//! pixelfeed client
