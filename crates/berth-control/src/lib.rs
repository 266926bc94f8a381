//! berth reconciler: plan(desired, observed) and its application.
