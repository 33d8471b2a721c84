//! Pipeline stage cores: grouping and transform. No I/O; time is a parameter.
