//! pixelfeed-engine's integration tests, one binary with a module per
//! feature. Tests that need the shared corpus (`../shared/corpus`) print
//! `SKIP: ...` and pass without it.

mod corpus;
mod jpeg_matrix;
