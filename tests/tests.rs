//! End-to-end tests of the `longtail` binary.
