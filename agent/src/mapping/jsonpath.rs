//! Json.NET-dialect JSONPath (placeholder; being written).
