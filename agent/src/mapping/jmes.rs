//! JMESPath with the IoMT connector's custom functions (placeholder; being written).
