//! Unit tests for the Json.NET JSONPath dialect.
