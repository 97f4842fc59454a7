//! Agora token formats: AccessToken2 ("007") and the legacy AccessToken ("006").
//!
//! Pure: no clock, no RNG, no async, no I/O. `issue_ts` and `salt` are arguments.
