//! berth inference gateway: routing snapshot, balancing, admission, streaming proxy.
