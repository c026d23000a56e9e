//! The application services between `http` and the mechanisms and `storage`, each the one
//! home of its policy: access control, the write path and the summary read path.

pub mod access;
pub mod summaries;
pub mod writes;
