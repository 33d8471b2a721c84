//! The agent's single integration-test binary. One module per area.
