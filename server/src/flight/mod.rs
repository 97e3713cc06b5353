//! Arrow Flight service (under construction).
