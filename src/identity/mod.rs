//! Caller authentication: verify JWTs from the company's identity providers into a `Principal`.
